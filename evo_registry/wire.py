"""The checks a report passes before anything is stored (docs/protocol.md, POST /v1/reports).

Order matters, cheapest and safest first: headers, size, signature over the gzip bytes exactly
as received (so nothing unauthenticated is ever decompressed), bounded decompression, JSON,
schema.  Each refusal is an ``HttpError`` whose reason tells the sender what to fix.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.resources
import ipaddress
import json
import logging
import re
import zlib
from collections.abc import Sequence
from typing import Any

from evo_registry.errors import HttpError, NotAuthentic

LOG = logging.getLogger(__name__)

MAX_COMPRESSED = 64 * 1024
MAX_EXPANDED = 1024 * 1024
# Matched with fullmatch: "$" would let a final newline through.
VPNID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_CHUNK = 16 * 1024


def load_schema() -> dict[str, Any]:
    """Return evo-inventory/1 from the agent's package (one source of truth for both sides)."""
    text = importlib.resources.files("evo_agent.schemas").joinpath(
        "evo-inventory-1.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.lru_cache(maxsize=1)
def validator() -> Any:
    """Return the validator of evo-inventory/1 (formats checked: the LAN addresses).

    jsonschema-rs, the Rust implementation of the same Draft 2020-12 that schemathesis uses:
    3.6 us for a valid report where the pure-Python jsonschema took 401 us (timeit, this
    machine), the difference between one validator in the request path and two (a compiled
    yes/no check plus jsonschema for the reason).  tests/registry/test_wire_fuzz.py checks its
    verdicts against jsonschema's.
    """
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(load_schema(), validate_formats=True)


def schema_errors(doc: Any) -> str | None:
    """Return the reason a document is not evo-inventory/1 (naming the field), or None."""
    v = validator()
    if v.is_valid(doc):  # the common case: a verdict without collecting errors
        return None
    error = next(iter(v.iter_errors(doc)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.instance_path) or "(document)"
    message = error.message
    if len(message) > 200:
        message = message[:200] + "..."
    return f"schema: {where}: {message}"


# PostgreSQL's bigint, the column of the sequence: the schema has no upper bound.
MAX_SEQUENCE = 2**63 - 1


@functools.lru_cache(maxsize=1)
def declared_collectors() -> frozenset[str]:
    """Return the collectors the privacy policy takes fields from (evo_agent's policy.toml)."""
    from evo_agent.policy import load_policy

    return frozenset(rule.collector for rule in load_policy().fields)


def storable_report(doc: Any) -> dict[str, Any]:
    """Return a report that is evo-inventory/1 and fits the database, kept to what the policy
    declares; raise 400 with the reason otherwise."""
    reason = schema_errors(doc)
    if reason:
        raise HttpError(400, reason)
    if doc["sequence"] > MAX_SEQUENCE:
        raise HttpError(400, f"schema: sequence: larger than {MAX_SEQUENCE}")
    return keep_declared(doc)


def keep_declared(doc: dict[str, Any]) -> dict[str, Any]:
    """Return a valid report with only what the policy declares.

    Every object of the schema but ``collectors`` refuses keys it does not name; that one maps a
    collector's name to its status, so a unit could send thousands of names (2,200 made 9 KB of
    gzip and a 1 MB row).  The names the policy does not know are dropped, not stored.
    """
    known = declared_collectors()
    status = doc["collectors"]
    if all(name in known for name in status):
        return doc
    dropped = [name for name in status if name not in known]
    LOG.debug("dropped %s undeclared collector names of a report", len(dropped))
    return {**doc, "collectors": {k: v for k, v in status.items() if k in known}}


def b64decode(text: str, what: str, status: int = 400) -> bytes:
    """Decode standard padded base64 or raise HttpError naming ``what``."""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HttpError(status, f"{what} is not base64") from exc


def public_key_bytes(text: str) -> bytes:
    """Return the 32 raw bytes of an Ed25519 public key given as base64, or raise 400."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = b64decode(text, "public_key")
    if len(raw) != 32:
        raise HttpError(400, "public_key: an Ed25519 key is 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise HttpError(400, "public_key: not an Ed25519 key") from exc
    return raw


@functools.lru_cache(maxsize=8192)
def _public_key(public_key_b64: str) -> Any:
    """Return the key object of an enrolled key (kept: building it was ~10% of a check)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))


@functools.lru_cache(maxsize=1)
def _nobody() -> str:
    """Return the key an unknown VPNID's signature is checked with (made once per process, its
    private half thrown away): the check costs what a real one costs, so neither the answer nor
    its time tells whether a VPNID is enrolled."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def verify_signature(public_key_b64: str | None, signature_b64: str, body: bytes) -> None:
    """Check an Ed25519 signature over ``body`` or raise 401; a key of None (unknown VPNID)
    gets the same checks and the same 401 as a wrong signature."""
    from cryptography.exceptions import InvalidSignature

    signature = b64decode(signature_b64, "X-Evo-Signature", status=401)
    if len(signature) != 64:
        raise HttpError(401, "X-Evo-Signature: an Ed25519 signature is 64 bytes")
    key = _public_key(public_key_b64 or _nobody())
    try:
        key.verify(signature, body)
    except InvalidSignature as exc:
        raise NotAuthentic from exc
    if public_key_b64 is None:
        raise NotAuthentic


def gunzip(body: bytes, limit: int = MAX_EXPANDED) -> bytes:
    """Decompress one gzip member, refusing more than ``limit`` bytes of output (zip bombs)."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header required, no zlib/raw
    out = bytearray()
    data = body
    try:
        while data:
            out += d.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise HttpError(413, f"body expands to more than {limit} bytes")
            data = d.unconsumed_tail
        out += d.flush(limit + 1 - len(out))
    except zlib.error as exc:
        raise HttpError(400, f"body is not gzip: {exc}") from exc
    if len(out) > limit:
        raise HttpError(413, f"body expands to more than {limit} bytes")
    if not d.eof:
        raise HttpError(400, "body is not gzip: truncated stream")
    if d.unused_data:
        raise HttpError(400, "body is not gzip: data after the end of the stream")
    return bytes(out)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# A \u escape of a UTF-16 surrogate: the only way a lone one gets into parsed JSON text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(node: Any) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(raw: bytes) -> Any:
    """Parse strict UTF-8 JSON (no NaN/Infinity, no lone surrogate) or raise 400."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from exc
    # json.loads takes "\ud800" alone; no database can store it (it is not UTF-8).  A pair is a
    # character beyond the BMP, which is fine: hence the walk, only when an escape is there.
    if _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(doc):
        raise HttpError(400, "body is not JSON text: a string holds a lone UTF-16 surrogate")
    return doc


def media_type(value: str | None) -> str:
    """Return the media type of a Content-Type header without parameters, lower case."""
    return (value or "").split(";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=16384)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address (cached: one report parses its few addresses six times over)."""
    return ipaddress.ip_address(text)


def stored_ip(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the address a stored column holds, or None (NULL, or not an address)."""
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def canonical_ip(text: str) -> str | None:
    """Return an address in canonical form (IPv4-mapped IPv6 as IPv4), or None if invalid."""
    try:
        addr = _ip(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def home_key(address: str) -> str:
    """Return what identifies a home on the internet: an IPv4 address, or an IPv6 /64.

    With IPv6 each device has its own global address (often a temporary one that changes
    daily), so the owner's browser and the 432 EVO share only the home's /64 prefix.
    """
    ip = _ip(address)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Sequence[Network]) -> str | None:
    """Return the WAN IP of a request: the peer, or the entry a trusted proxy added.

    X-Forwarded-For is read from the right: each hop that is a trusted proxy vouches for the
    entry before it; the first address that is not a trusted proxy is the client.  Entries a
    client wrote itself (further left) are never believed.
    """
    current = canonical_ip(peer or "")
    if current is None or not forwarded_for:
        return current
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    while hops and _is_trusted(current, trusted):
        hop = canonical_ip(hops.pop())
        if hop is None:
            return None  # a trusted proxy wrote garbage: no usable address, not the proxy's
        current = hop
    return current


def in_networks(addr: str | None, networks: Sequence[Network]) -> bool:
    """Return True when an address lies in one of the networks."""
    if addr is None:
        return False
    ip = _ip(addr)
    return any(ip.version == net.version and ip in net for net in networks)


_is_trusted = in_networks
