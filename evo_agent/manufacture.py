"""Manufacturing: check a finished unit against its bill of materials, identify it, enrol it.

On the line each unit is booted once in manufacturing mode and ``evo-agent manufacture`` runs:

1. the full inventory is collected (trigger ``manufacturing``) through the same collectors and
   the same privacy filter as ``evo-agent inventory``: the registry receives exactly what a
   report would carry;
2. the unit is checked against the ``[manufacture]`` section of the station's config (a real
   motherboard serial, the onboard MAC, a boot drive serial, a rip drive, the audio device, the RAM
   size).  Values are judged as the filter cleaned them, so a firmware placeholder ("To be filled
   by O.E.M.", which the filter turns into null) fails like a missing value;
3. only a unit that passes gets an identity: the VPNID file is written (atomically), the Ed25519
   device key is created if there is none (``evo_agent.delivery.signing``), and the unit is enrolled
   with the registry (``POST /v1/enroll``, docs/protocol.md), or, on an offline line, an enrolment
   bundle signed by the device key is written for ``evo-registry import``.

Idempotence: the outcome of an enrolment is kept in the state directory (``enrolment.json``); a
second run on the same unit with the same VPNID, key and registry sends nothing and gives the same
verdict.  Anything that would give the unit a second identity (another VPNID in its file, a VPNID
the registry holds under another key) stops with "already enrolled" unless ``--force``, which
sends ``override: true`` and is logged to the journal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evo_agent.config import DEFAULT_VPNID_FILE, Config
from evo_agent.errors import (
    AlreadyEnrolled,
    ConfigError,
    DeliveryError,
    EvoError,
    OutputError,
    RegistryRefused,
    RegistryUnreachable,
    StateError,
    UnitFailed,
    UsageError,
)
from evo_agent.hostroot import Host
from evo_agent.report import open_host, rfc3339

LOG = logging.getLogger(__name__)

ENROL_PATH = "/v1/enroll"
MARKER = "enrolment.json"
BUNDLE_FORMAT = "evo-enrolment-bundle/1"
BUNDLE_SUFFIX = ".evo-enrol.json"
GIB = 1024**3
_USB_ID = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]|[\u2028-\u202e\u2066-\u2069]")
# Kernel command line words: bare or with a "double-quoted" value (the kernel strips the quotes,
# lib/cmdline.c next_arg()); no other escaping exists.
_CMDLINE_WORD = re.compile(r'(?:[^\s"]+|"[^"]*")+')

Clock = Callable[[], datetime]


# ---- the checks ------------------------------------------------------------------------------
@dataclass
class Check:
    """One line of the verdict: what was checked, seen and expected."""

    name: str
    label: str
    passed: bool
    seen: Any
    expected: str
    detail: str | None = None

    def doc(self) -> dict[str, Any]:
        """Return the check as JSON."""
        return {"check": self.name, "label": self.label,
                "result": "pass" if self.passed else "fail", "seen": self.seen,
                "expected": self.expected, "detail": self.detail}


def _shown(value: Any, limit: int = 64) -> str:
    """Return a raw hardware string fit for a console line (bounded, no control characters)."""
    text = _UNPRINTABLE.sub("?", str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _get(doc: Mapping[str, Any] | None, *keys: str) -> Any:
    node: Any = doc
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _collector_problem(report: Mapping[str, Any], name: str,
                       messages: Mapping[str, str | None]) -> str | None:
    status = _get(report, "collectors", name, "status")
    if status == "error":
        return f"collector {name} failed: {messages.get(name) or 'error'}"
    if status is None:
        return f"collector {name} did not run (disabled in the config?)"
    return None


def _serial_check(name: str, label: str, *, cleaned: Any, raw: Any, absent: str,
                  problem: str | None) -> Check:
    expected = "a real serial (not a firmware placeholder)"
    if isinstance(cleaned, str) and cleaned:
        return Check(name, label, True, cleaned, expected)
    if raw not in (None, ""):
        return Check(name, label, False, _shown(raw), expected,
                     "a placeholder: the privacy filter sends it as null")
    return Check(name, label, False, None, expected, problem or absent)


def check_unit(report: Mapping[str, Any], raw: Mapping[str, Mapping[str, Any] | None],
               bom: Mapping[str, Any], messages: Mapping[str, str | None] | None = None
               ) -> list[Check]:
    """Check a manufacturing report (and the raw values behind it) against the BOM."""
    messages = messages or {}
    # The filter gives the report its types, but raw values are whatever a collector (or a
    # damaged capture) returned: anything of an unexpected type counts as absent.
    hw = _mapping(report.get("hardware"))
    dmi, disks, alsa = (_mapping(raw.get(name)) for name in ("dmi", "disks", "alsa"))
    checks: list[Check] = []
    if bom["require_board_serial"]:
        checks.append(_serial_check(
            "board_serial", "motherboard serial", cleaned=_get(hw, "motherboard", "serial"),
            raw=dmi.get("board_serial"), absent="no motherboard serial in the SMBIOS table",
            problem=_collector_problem(report, "dmi", messages)))
    if bom["require_mac"]:
        mac = _text(hw.get("mac_address"))
        checks.append(Check("mac", "onboard MAC", bool(mac), mac,
                            "the MAC address of an onboard wired NIC",
                            None if mac else _collector_problem(report, "network", messages)
                            or "no onboard wired NIC found"))
    if bom["require_boot_drive_serial"]:
        found = _text(disks.get("boot_drive_device"))
        checks.append(_serial_check(
            "boot_drive_serial", "boot drive serial", cleaned=_get(hw, "boot_drive", "serial"),
            raw=disks.get("boot_drive_serial"),
            absent=f"the boot drive ({found}) shows no serial" if found
            else "no boot drive found under /",
            problem=_collector_problem(report, "disks", messages)))
    if bom["require_rip_drive"]:
        device = _text(disks.get("rip_drive_device"))
        seen = None
        if device:
            model = _text(_get(hw, "rip_drive", "model")) or "unknown model"
            serial = _text(_get(hw, "rip_drive", "serial"))
            seen = f"{device}: {model}" + (f" (serial {serial})" if serial else "")
        checks.append(Check("rip_drive", "rip drive", bool(device), seen, "an optical drive",
                            None if device else _collector_problem(report, "disks", messages)
                            or "no optical drive found"))
    if bom["require_audio"] or bom["expected_audio"]:
        checks.append(_audio_check(_list(hw.get("audio_devices")), _list(alsa.get("cards")),
                                   bom["expected_audio"],
                                   _collector_problem(report, "alsa", messages)))
    if bom["min_ram_bytes"]:
        total = _get(hw, "ram", "total_bytes")
        want = int(bom["min_ram_bytes"])
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            total = None
        ok = total is not None and total >= want
        checks.append(Check("ram", "RAM", ok,
                            f"{total / GIB:g} GiB ({total} bytes)" if total else None,
                            f"at least {want / GIB:g} GiB ({want} bytes)",
                            None if total else _collector_problem(report, "dmi", messages)
                            or "RAM size unknown"))
    return checks


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _card_text(card: Mapping[str, Any]) -> str:
    parts = [str(card.get("name") or card.get("id") or "?")]
    extra = ", ".join(str(card[k]) for k in ("driver", "bus", "usb_id") if card.get(k))
    return f"card {card.get('card')}: " + " ".join(parts) + (f" ({extra})" if extra else "")


def audio_matches(card: Mapping[str, Any], expected: str) -> bool:
    """Return True when an ALSA card is the expected one (USB ID, or a substring of its names)."""
    if _USB_ID.match(expected):
        return str(card.get("usb_id") or "").lower() == expected.lower()
    want = expected.casefold()
    return any(want in str(card.get(k) or "").casefold()
               for k in ("name", "long_name", "id", "driver", "alsa_driver"))


def _audio_check(sent: list[Any], raw_cards: list[Any], expected: str,
                 problem: str | None) -> Check:
    # Shown from the report (the filter drops names that may be personal), matched on the raw
    # values, which also hold the long name and ALSA's own driver name.
    seen = [_card_text(c) for c in sent if isinstance(c, Mapping)] or None
    if not expected:
        return Check("audio", "audio device", bool(raw_cards), seen, "at least one sound card",
                     None if raw_cards else problem or "no ALSA sound card")
    ok = any(isinstance(c, Mapping) and audio_matches(c, expected) for c in raw_cards)
    return Check("audio", "audio device", ok, seen, f"a sound card matching {expected!r}",
                 None if ok else problem or ("no ALSA sound card" if not raw_cards
                                             else "no card matches"))


# ---- collection ------------------------------------------------------------------------------
@dataclass
class Collected:
    """The report and what the checks need beside it."""

    report: dict[str, Any]
    raw: dict[str, Any]
    messages: dict[str, str | None]


def collect_report(cfg: Config, host: Host, vpnid: str, clock: Clock) -> Collected:
    """Collect the inventory and build the manufacturing report carrying ``vpnid``."""
    from evo_agent.report import inventory_report

    # The VPNID file is written only once the unit passes: the report carries the VPNID the
    # unit is about to get, not what a previous run may have left.
    run = inventory_report(cfg, host=host, trigger="manufacturing", clock=clock,
                           raw_overrides={"identity": {"vpnid": vpnid}})
    return Collected(run.report, run.inventory.raw(),
                     {n: o.error_message for n, o in run.inventory.outcomes.items()})


# ---- the kernel command line -----------------------------------------------------------------
def parse_cmdline(text: str) -> dict[str, str]:
    """Return the ``evo.*`` parameters of a kernel command line (the last one of a name wins)."""
    params: dict[str, str] = {}
    for word in _CMDLINE_WORD.findall(text):
        key, sep, value = word.replace('"', "").partition("=")
        if key.startswith("evo.") and sep:
            params[key] = value
    return params


def vpnid_from_cmdline(host: Host) -> str:
    """Return the VPNID given by ``evo.vpnid=`` or read from the file ``evo.vpnid_file=`` names."""
    try:
        text = host.read_text("/proc/cmdline", 64 * 1024)
    except OSError as exc:
        raise UsageError(f"--from-cmdline: /proc/cmdline cannot be read ({exc.strerror})") \
            from None
    params = parse_cmdline(text)
    if "evo.vpnid" in params:
        return params["evo.vpnid"]
    path = params.get("evo.vpnid_file", "")
    if path:
        if not path.startswith("/"):
            raise UsageError(f"--from-cmdline: evo.vpnid_file={path}: an absolute path is needed")
        value = host.read_attr(path)
        if not value:
            raise UsageError(f"--from-cmdline: evo.vpnid_file={path}: missing or empty")
        return value
    raise UsageError("--from-cmdline: the kernel command line has no evo.vpnid= nor "
                     "evo.vpnid_file=")


# ---- identity --------------------------------------------------------------------------------
def valid_vpnid(text: str, where: str = "--vpnid") -> str:
    """Return the VPNID if it has the shape printed on the box, else raise UsageError."""
    from evo_agent.policy import CLEANERS

    value = CLEANERS["vpnid"](text)
    if not isinstance(value, str) or value != text:
        raise UsageError(f"{where} {_shown(text)!r}: not a VPNID (letters, digits, '-' and '_', "
                         "at most 64, starting with a letter or digit, not a placeholder)")
    return value


def vpnid_file(cfg: Config) -> Path:
    """Return where the identity collector reads the VPNID, under the configured host root."""
    path = str(cfg.collectors.get("identity", {}).get("vpnid_file", DEFAULT_VPNID_FILE))
    root = str(cfg.values["agent"].get("host_root", "/"))
    return Path(root) / path.lstrip("/")


def read_vpnid_file(path: Path) -> str | None:
    """Return the VPNID a unit holds, or None when it has none yet."""
    try:
        return path.read_text("utf-8", "replace").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot be read ({exc.strerror})") from None


def write_vpnid_file(path: Path, vpnid: str) -> None:
    """Write the VPNID file atomically (mode 0644: the daemon reads it as its own user)."""
    from evo_agent.delivery.outbox import atomic_write

    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, (vpnid + "\n").encode(), mode=0o644)
    except OSError as exc:
        raise StateError(f"{path}: cannot be written ({exc.strerror})") from None


# ---- the enrolment ---------------------------------------------------------------------------
def enrol_body(vpnid: str, public_key: str, report: Mapping[str, Any], bom: Mapping[str, Any],
               *, now: datetime, override: bool) -> bytes:
    """Return the POST /v1/enroll body (docs/protocol.md)."""
    doc: dict[str, Any] = {
        "vpnid": vpnid, "public_key": public_key, "report": report,
        "sales_region": sorted(set(bom["sales_region"])),
        "psu_variant": bom["psu_variant"].strip().upper(),
        "manufactured_at": rfc3339(now), "override": override,
    }
    if bom["model"]:
        doc["model"] = bom["model"]
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _base(url: str) -> str:
    return url.rstrip("/")


def post_json(url: str, body: bytes, token: str, *, ca_bundle: str,
              timeout: float) -> tuple[int, dict[str, Any]]:
    """POST the enrolment; return the status and the JSON answer, or raise RegistryUnreachable.

    The agent's transport rules (``evo_agent.delivery.transport.exchange``): https verified against
    the registry's CA bundle only, plain http only to a loopback address; ``timeout`` bounds the
    whole exchange, so a registry that drips bytes cannot hold the line.
    """
    from evo_agent.delivery.transport import TransportError, exchange

    if urlsplit(url).scheme not in ("https", "http"):
        raise ConfigError(None, "manufacture.registry_url", f"{url}: not an http(s) URL")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    try:
        resp = exchange(url, ENROL_PATH, body, headers, ca_bundle=ca_bundle,
                        connect_timeout=timeout, total_timeout=timeout)
    except DeliveryError as exc:
        if urlsplit(url).scheme == "https":
            raise ConfigError(None, "delivery.ca_bundle", str(exc)) from None
        raise ConfigError(None, "manufacture.registry_url",
                          f"{url}: plain http is refused except to a loopback address; "
                          "use https:// (verified with [delivery] ca_bundle)") from None
    except TransportError as exc:
        raise RegistryUnreachable(f"registry unreachable: {exc}") from None
    try:
        answer = json.loads(resp.body)
    except ValueError:
        answer = {}
    return resp.status, answer if isinstance(answer, dict) else {}


def enrol_online(url: str, body: bytes, token: str, *, ca_bundle: str,
                 timeout: float) -> str:
    """Enrol; return the registration form's URL or raise the error the line must see."""
    status, answer = post_json(url, body, token, ca_bundle=ca_bundle, timeout=timeout)
    reason = str(answer.get("error") or "")[:300]
    if status in (200, 201):  # 200: enrolled before with this key (a retry after a lost answer)
        form = str(answer.get("registration_form") or "")
        return _base(url) + form if form.startswith("/") else form
    if status == 409:
        raise AlreadyEnrolled(f"the registry holds this VPNID under another identity ({reason}); "
                              "check the label, or re-enrol with --force")
    if status >= 500:
        raise RegistryUnreachable(f"registry {url}: HTTP {status} {reason}".rstrip())
    if status == 401:
        raise RegistryRefused(f"registry {url}: the factory token was refused ({reason})")
    raise RegistryRefused(f"registry {url}: enrolment refused: HTTP {status} {reason}".rstrip())


def bundle_path(directory: Path, vpnid: str) -> Path:
    """Return the file of one unit's enrolment bundle."""
    return directory / f"{vpnid}{BUNDLE_SUFFIX}"


def make_bundle(body: bytes, key: Any, token: str, vpnid: str) -> bytes:
    """Return an enrolment bundle (docs/protocol.md, "Enrolment bundle")."""
    from evo_agent.delivery.signing import sign

    doc = {
        "format": BUNDLE_FORMAT,
        "vpnid": vpnid,
        "request": base64.b64encode(body).decode("ascii"),
        "signature": sign(key, body),
        "factory_mac": base64.b64encode(
            hmac.new(token.encode(), body, hashlib.sha256).digest()).decode("ascii"),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def bundle_public_key(path: Path) -> str | None:
    """Return the public key enrolled by an existing bundle, or None when there is none."""
    try:
        doc = json.loads(path.read_bytes())
        request = json.loads(base64.b64decode(doc["request"], validate=True))
        return str(request["public_key"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"{path}: exists and is not a readable bundle ({exc}); move it away") \
            from None


def read_token(path: str) -> str:
    """Return the factory token kept in a file (first line)."""
    try:
        token = Path(path).read_text("utf-8").strip().splitlines()
    except OSError as exc:
        raise UsageError(f"factory token file {path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"factory token file {path}: not UTF-8 text") from None
    if not token or not token[0].strip():
        raise UsageError(f"factory token file {path}: empty")
    return token[0].strip()


def _journal(message: str) -> None:
    import syslog

    syslog.openlog("evo-agent", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_WARNING, message)


# ---- the whole run ---------------------------------------------------------------------------
@dataclass
class Request:
    """What the operator asked for, merged with the station's config."""

    vpnid: str | None
    from_cmdline: bool = False
    registry: str | None = None
    token_file: str | None = None
    offline: str | None = None
    force: bool = False
    source: str | None = None


@dataclass
class Result:
    """The document printed, and the error that gives the exit status (None: success)."""

    doc: dict[str, Any]
    error: EvoError | None = None
    checks: list[Check] = field(default_factory=list)


#: The enrolment's status in the JSON verdict when it did not happen.
_STATUS: dict[type[EvoError], str] = {
    AlreadyEnrolled: "already_enrolled", RegistryUnreachable: "registry_unreachable",
    RegistryRefused: "refused", OutputError: "not_written",
}


def _settings(cfg: Config, req: Request) -> tuple[dict[str, Any], str, str]:
    """Return the BOM, the registry URL and the token, after checking what enrolment needs."""
    bom = dict(cfg.values["manufacture"])
    where = cfg.sources[-1] if cfg.sources else None
    url = req.registry if req.registry is not None else bom["registry_url"]
    token_file = req.token_file or bom["factory_token_file"]
    if req.offline is not None:
        if not Path(req.offline).is_dir():
            raise UsageError(f"--offline {req.offline}: no such directory")
    elif not url:
        raise UsageError("no registry: give --registry URL or [manufacture] registry_url "
                         "(or --offline DIR on a line without one)")
    elif not url.startswith(("http://", "https://")):
        raise UsageError(f"--registry {url}: an http:// or https:// URL is needed")
    if not token_file:
        raise UsageError("no factory token: give --factory-token-file FILE or [manufacture] "
                         "factory_token_file (offline bundles are authenticated with it too)")
    if not bom["sales_region"]:
        raise ConfigError(where, "manufacture.sales_region",
                          "must be set: the registry enrols a unit with its sales region")
    if not bom["psu_variant"]:
        raise ConfigError(where, "manufacture.psu_variant",
                          "must be set: the registry enrols a unit with its PSU variant")
    return bom, url, read_token(token_file)


def run(cfg: Config, req: Request, *,
        clock: Clock = lambda: datetime.now(timezone.utc),
        monotonic: Callable[[], float] = time.monotonic) -> Result:
    """Check, identify and enrol one unit; never raises for a verdict (see Result.error)."""
    from evo_agent.delivery import signing
    from evo_agent.delivery.outbox import ensure_dir, writer_lock

    started = monotonic()
    with open_host(cfg, req.source) as host:
        vpnid = (valid_vpnid(vpnid_from_cmdline(host), "kernel command line: VPNID")
                 if req.from_cmdline else valid_vpnid(req.vpnid or ""))
        bom, url, token = _settings(cfg, req)
        got = collect_report(cfg, host, vpnid, clock)
    checks = check_unit(got.report, got.raw, bom, got.messages)
    failed = [c for c in checks if not c.passed]
    doc: dict[str, Any] = {
        "verdict": "FAIL" if failed else "PASS",
        "vpnid": vpnid,
        "checks": [c.doc() for c in checks],
        "report_id": got.report["report_id"],
        "identity": None,
        "enrolment": None,
    }
    result = Result(doc, checks=checks)

    def finish(error: EvoError | None) -> Result:
        doc["duration_ms"] = int((monotonic() - started) * 1000)
        doc["exit_code"] = error.exit_code if error else 0
        if error is not None:
            doc["error"] = str(error)
        result.error = error
        return result

    if failed:
        return finish(UnitFailed("FAIL: " + "; ".join(
            f"{c.label}: {c.detail or 'expected ' + c.expected}" for c in failed)))
    state_dir = ensure_dir(cfg.state_dir)
    id_path = vpnid_file(cfg)
    with writer_lock(state_dir):
        held = read_vpnid_file(id_path)
        if held is not None and held != vpnid and not req.force:
            return finish(AlreadyEnrolled(
                f"this unit already holds VPNID {held} ({id_path}); give it {vpnid} with --force"))
        key_existed = signing.key_path(state_dir).exists()
        key = signing.load_or_create(state_dir)
        public_key = signing.public_b64(key)
        if held != vpnid:
            write_vpnid_file(id_path, vpnid)
        doc["identity"] = {"vpnid_file": str(id_path), "vpnid_written": held != vpnid,
                           "key": str(signing.key_path(state_dir)), "key_created": not key_existed,
                           "public_key": public_key}
        if req.force:
            LOG.warning("re-enrolling %s with --force (override)", vpnid)
            _journal(f"evo-agent manufacture: {vpnid} enrolled with --force (override: true) "
                     f"by uid {os.getuid()}")
        body = enrol_body(vpnid, public_key, got.report, bom, now=clock(), override=req.force)
        if req.offline is not None:
            try:
                doc["enrolment"] = _offline(Path(req.offline), vpnid, public_key, body,
                                            key=key, token=token, force=req.force)
            except (AlreadyEnrolled, OutputError) as exc:
                doc["enrolment"] = {"status": _STATUS[type(exc)], "error": str(exc)}
                return finish(exc)
            return finish(None)
        marker = _read_marker(state_dir)
        if (not req.force and marker.get("vpnid") == vpnid
                and marker.get("public_key") == public_key
                and marker.get("registry") == _base(url)):
            doc["enrolment"] = {"status": "enrolled", "sent": False,
                                "enrolled_at": marker.get("enrolled_at"),
                                "registration_form": marker.get("registration_form")}
            return finish(None)
        timeout = float(bom["timeout"])
        try:
            form = enrol_online(url, body, token, ca_bundle=cfg.values["delivery"]["ca_bundle"],
                                timeout=timeout)
        except (AlreadyEnrolled, RegistryUnreachable, RegistryRefused) as exc:
            doc["enrolment"] = {"status": _STATUS[type(exc)], "sent": True, "error": str(exc)}
            return finish(exc)
        stamp = rfc3339(clock())
        _write_marker(state_dir, {"vpnid": vpnid, "public_key": public_key,
                                  "registry": _base(url), "enrolled_at": stamp,
                                  "registration_form": form, "forced": req.force})
        doc["enrolment"] = {"status": "enrolled", "sent": True, "enrolled_at": stamp,
                            "registration_form": form, "forced": req.force}
    return finish(None)


def _offline(directory: Path, vpnid: str, public_key: str, body: bytes, *, key: Any, token: str,
             force: bool) -> dict[str, Any]:
    """Write the unit's bundle, keeping an earlier one of the same identity."""
    from evo_agent.delivery.outbox import atomic_write

    path = bundle_path(directory, vpnid)
    existing = bundle_public_key(path)
    if existing is not None and not force:
        if existing != public_key:
            raise AlreadyEnrolled(f"{path}: a bundle of {vpnid} with another device key exists; "
                                  "check the label, or replace it with --force")
        return {"status": "bundle_written", "written": False, "bundle": str(path)}
    try:
        atomic_write(path, make_bundle(body, key, token, vpnid), mode=0o644)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror})") from None
    return {"status": "bundle_written", "written": True, "bundle": str(path), "forced": force}


def _read_marker(state_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((state_dir / MARKER).read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        LOG.warning("%s unreadable (%s): enrolling again", state_dir / MARKER, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_marker(state_dir: Path, doc: Mapping[str, Any]) -> None:
    from evo_agent.delivery.outbox import atomic_write

    try:
        atomic_write(state_dir / MARKER, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o640)
    except OSError as exc:
        raise StateError(f"{state_dir / MARKER}: cannot be written ({exc.strerror})") from None


# ---- output ----------------------------------------------------------------------------------
def verdict_text(doc: Mapping[str, Any]) -> str:
    """Return the verdict for people: PASS or FAIL first, then one line per check."""
    checks = doc["checks"]
    failed = [c for c in checks if c["result"] == "fail"]
    enrol = doc.get("enrolment") or {}
    if failed:
        head = f"FAIL {doc['vpnid']}: " + ", ".join(c["label"] for c in failed)
    elif doc.get("exit_code"):
        head = f"PASS {doc['vpnid']}: unit passes, NOT ENROLLED (exit {doc['exit_code']})"
    elif enrol.get("status") == "bundle_written":
        head = f"PASS {doc['vpnid']}: bundle {enrol['bundle']}"
    else:
        head = f"PASS {doc['vpnid']}: {enrol.get('registration_form')}"
    lines = [head]
    for c in checks:
        seen = c["seen"]
        shown = ("none" if seen in (None, [], "") else
                 "; ".join(seen) if isinstance(seen, list) else str(seen))
        mark = "ok  " if c["result"] == "pass" else "FAIL"
        line = f"  {mark} {c['label']:<19} {shown}"
        if c["result"] == "fail":
            line += f"  (expected {c['expected']}" + (f": {c['detail']})" if c["detail"] else ")")
        lines.append(line)
    ident = doc.get("identity")
    if ident:
        lines.append(f"  identity: {ident['vpnid_file']} "
                     f"({'written' if ident['vpnid_written'] else 'unchanged'}), key "
                     f"{ident['key']} ({'created' if ident['key_created'] else 'kept'})")
    if enrol.get("status") == "enrolled":
        sent = "enrolled now" if enrol.get("sent") else "enrolled before, nothing sent"
        lines.append(f"  registry: {sent} ({enrol.get('enrolled_at')}); registration form "
                     f"{enrol.get('registration_form')}")
    elif enrol.get("status") == "bundle_written":
        lines.append(f"  offline: bundle {enrol['bundle']} "
                     f"({'written' if enrol['written'] else 'kept from an earlier run'}); "
                     "load it with 'evo-registry import'")
    elif doc.get("error") and not failed:
        lines.append(f"  error: {doc['error']}")
    lines.append(f"  {doc.get('duration_ms')} ms")
    return "\n".join(lines) + "\n"
