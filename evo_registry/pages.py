"""The HTML pages: the owner's finder (public) and the support list of open events.

Jinja2 templates (``templates/``) with auto-escaping: everything that comes from a device is
escaped by the template engine, not by hand.  The finder shows, of each of the visitor's devices,
only what the policy gives it for: the NetBIOS name, the model, when it was last seen and the
link to its web interface at its LAN IP (and the second LAN IP); links are built only from values
that parse as IP addresses.  Pages carry no script and load nothing from elsewhere.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from evo_registry import wire

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def lan_link(address: object) -> str | None:
    """Return http://<address>/ for a valid IP address, else None."""
    ip = wire.stored_ip(address)
    if ip is None:
        return None
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{host}/"


def when(stamp: object) -> str:
    """Return a stored time (2026-11-23T01:40:23.123456Z) to the minute, for people."""
    return str(stamp)[:16].replace("T", " ") + " UTC" if stamp else ""


def detail(text: object) -> str:
    """Return an event's detail (stored as JSON text) as one line of JSON."""
    return json.dumps(json.loads(text) if isinstance(text, str) else {})


@functools.lru_cache(maxsize=1)
def templates() -> Jinja2Templates:
    """Return the template engine (auto-escaping on: Starlette's default for .html)."""
    t = Jinja2Templates(directory=Path(__file__).with_name("templates"))
    t.env.filters.update(lan_link=lan_link, when=when, detail=detail)
    return t


def render(request: Request, name: str, context: Mapping[str, Any],
           form_action: str = "'none'", *, status: int = 200,
           headers: Mapping[str, str] | None = None) -> Response:
    """Return a page from its template (``form_action``: where its forms may submit)."""
    sent = dict(PAGE_HEADERS)
    sent["Content-Security-Policy"] = sent["Content-Security-Policy"].replace(
        "form-action 'none'", f"form-action {form_action}")
    sent.update(headers or {})
    return templates().TemplateResponse(request, name, dict(context), status_code=status,
                                        headers=sent)
