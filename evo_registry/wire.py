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
from collections.abc import Callable, Sequence
from typing import Any

from evo_registry.errors import HttpError, NotAuthentic

LOG = logging.getLogger(__name__)

MAX_COMPRESSED = 64 * 1024
MAX_EXPANDED = 1024 * 1024
VPNID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CHUNK = 16 * 1024


def load_schema() -> dict[str, Any]:
    """Return evo-inventory/1 from the agent's package (one source of truth for both sides)."""
    text = importlib.resources.files("evo_agent.schemas").joinpath(
        "evo-inventory-1.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Return the schema with its local ``#/$defs/...`` references replaced by their targets.

    The same document, validated the same way, but jsonschema no longer resolves a reference for
    every field of every USB and PCI device: that resolution was half the time of a report.
    A reference beside other keywords becomes ``allOf`` (2020-12 semantics); the schema is not
    recursive, and a recursive one is refused rather than expanded forever.
    """
    defs = schema.get("$defs", {})

    def walk(node: Any, depth: int) -> Any:
        if depth > 64:
            raise ValueError("schema too deep or recursive: not inlined")
        if isinstance(node, list):
            return [walk(x, depth + 1) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v, depth + 1) for k, v in node.items() if k not in ("$ref", "$defs")}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            target = walk(defs[ref[8:]], depth + 1)
            if not out:
                return target
            out["allOf"] = [*out.get("allOf", []), target]
        elif ref is not None:
            out["$ref"] = ref
        return out

    flat: dict[str, Any] = walk(schema, 0)
    return flat


@functools.lru_cache(maxsize=1)
def validator() -> Any:
    """Return the validator of evo-inventory/1 (references inlined, formats checked)."""
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    # Formats (ipv4/ipv6 of the LAN addresses) are only checked when asked for.
    return Draft202012Validator(inline_refs(schema),
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


@functools.lru_cache(maxsize=1)
def quick_check() -> Callable[[Any], bool]:
    """Return the compiled yes/no check of evo-inventory/1 (jsonschema's own if it cannot be)."""
    from jsonschema import Draft202012Validator

    from evo_registry.fastschema import Unsupported, compile_schema

    try:
        return compile_schema(inline_refs(load_schema()), Draft202012Validator.FORMAT_CHECKER)
    except Unsupported as exc:
        LOG.warning("schema not compiled (%s): reports are checked by jsonschema alone", exc)
        is_valid: Callable[[Any], bool] = validator().is_valid
        return is_valid


def schema_errors(doc: Any) -> str | None:
    """Return the reason a document is not evo-inventory/1 (naming the field), or None."""
    from jsonschema.exceptions import best_match

    if quick_check()(doc):  # the common case: a verdict without collecting errors
        return None
    v = validator()
    error = best_match(v.iter_errors(doc))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(document)"
    message = error.message
    if len(message) > 200:
        message = message[:200] + "..."
    return f"schema: {where}: {message}"


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


def parse_json(raw: bytes) -> Any:
    """Parse strict UTF-8 JSON (no NaN/Infinity) or raise 400."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from exc


def media_type(value: str | None) -> str:
    """Return the media type of a Content-Type header without parameters, lower case."""
    return (value or "").split(";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=16384)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address (cached: one report parses its few addresses six times over)."""
    return ipaddress.ip_address(text)


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
