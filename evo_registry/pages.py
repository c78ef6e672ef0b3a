"""The two HTML pages: the owner's finder (public) and the support list of open events.

The finder shows, of each of the visitor's devices, only what the policy gives it for: the
NetBIOS name, the model, when it was last seen and the link to its web interface at its LAN IP
(and the second LAN IP).  Everything that comes from a device is escaped; links are built only
from values that parse as IP addresses.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from html import escape

from evo_registry.db import Row

_STYLE = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
          "td,th{padding:.3em .8em;border-bottom:1px solid #ccc;text-align:left}")


def lan_link(address: object) -> str | None:
    """Return http://<address>/ for a valid IP address, else None."""
    if not isinstance(address, str):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{host}/"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1>\n{body}\n</body></html>\n")


def _when(stamp: object) -> str:
    # Stored as 2026-11-23T01:40:23.123456Z: minutes are enough for people.
    return escape(str(stamp)[:16].replace("T", " ") + " UTC") if stamp else ""


_ASK_VPNID = ('<form method="get" action="/"><p>Several homes reach the internet through this '
              'address. Enter the VPNID printed on your 432 EVO and on its box to find it:</p>'
              '<p><input name="vpnid" required maxlength="64" autocomplete="off" '
              'aria-label="VPNID"> <button type="submit">Find</button></p></form>')


def finder(rows: Sequence[Row], days: int = 30, ask_vpnid: bool = False,
           asked: str | None = None) -> str:
    """Return the finder page for the visitor's devices (on a shared address: the VPNID form)."""
    if ask_vpnid and not rows:
        missing = ""
        if asked:
            missing = (f"<p>No 432 EVO with VPNID {escape(asked)} has reported from your network "
                       f"in the last {int(days)} days.</p>")
        return _page("Your 432 EVO", missing + _ASK_VPNID)
    if not rows:
        body = (f"<p>No 432 EVO has reported from your network in the last {int(days)} days. "
                "Check that it is switched on and connected to the internet, then reload this "
                "page.</p>")
        return _page("Your 432 EVO", body)
    items = []
    for r in rows:
        links = []
        for key in ("lan_ip", "lan_ip_secondary"):
            url = lan_link(r.get(key))
            if url:
                links.append(f'<a class="lan" href="{escape(url)}">{escape(url)}</a>')
        name = escape(str(r.get("netbios_name") or "(no name)"))
        model = escape(str(r.get("model") or "432 EVO"))
        items.append(f'<tr class="device"><td class="name">{name}</td><td>{model}</td>'
                     f"<td>{_when(r.get('last_seen'))}</td><td>{' '.join(links)}</td></tr>")
    body = ("<table><thead><tr><th>Name</th><th>Model</th><th>Last seen</th>"
            "<th>Web interface</th></tr></thead><tbody>\n" + "\n".join(items)
            + "\n</tbody></table>")
    return _page("Your 432 EVO", body)


def support(rows: Sequence[Row]) -> str:
    """Return the support page: open events with their device."""
    if not rows:
        return _page("Open events", "<p>No open events.</p>")
    items = []
    for r in rows:
        detail = json.loads(r["detail"]) if isinstance(r.get("detail"), str) else {}
        vpnid = escape(str(r["vpnid"]))
        items.append(
            f'<tr class="event"><td><a href="/v1/devices/{vpnid}">{vpnid}</a></td>'
            f"<td>{escape(str(r['kind']))}</td><td>{escape(json.dumps(detail))}</td>"
            f"<td>{escape(str(r.get('country') or ''))}</td><td>{_when(r['first_at'])}</td>"
            f"<td>{_when(r['last_at'])}</td><td>{int(r['occurrences'])}</td>"
            f"<td>{int(r['id'])}</td></tr>")
    body = ("<table><thead><tr><th>VPNID</th><th>Event</th><th>Detail</th><th>Country</th>"
            "<th>First</th><th>Last</th><th>Times</th><th>Id</th></tr></thead><tbody>\n"
            + "\n".join(items) + "\n</tbody></table>")
    return _page("Open events", body)
