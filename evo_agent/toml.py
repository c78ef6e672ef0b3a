"""TOML for the agent's two files, without importing tomllib when the answer is known.

tomllib is a pure-Python parser: importing it costs 19.5M instructions (measured with callgrind on
Debian's python 3.11) and parsing policy.toml 10M more, a tenth of ``evo-agent inventory`` in a
QEMU TCG guest.  Two shortcuts give tomllib's exact answer without it:

* ``/etc/evo-agent/agent.toml`` as shipped is comments, blank lines and empty ``[section]``
  headers (every option commented out): :func:`loads` reads such a text itself and hands any
  other text to tomllib;
* ``policy.toml`` ships with ``policy.json`` beside it (``scripts/policy_json.py`` writes it; a
  test checks it is current): tomllib's result for the very text it was made from, which
  :func:`loads_cached` uses only when that text is byte for byte the one read.
"""

from __future__ import annotations

import json
import re
import sys

TYPE_CHECKING = False  # typing is not imported at run time (see evo_agent/plain.py)
if TYPE_CHECKING:
    from typing import Any

# A bare-key table header alone on its line (TOML 1.0 "std-table"), e.g. [collectors.dmi].
_HEADER = re.compile(r"\[([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\]")
# Characters TOML allows nowhere, not even in a comment: control characters but tab, and a
# carriage return that does not end a line.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 (tomli is a dependency there only)
        import tomli as tomllib
    return tomllib


def decode_error() -> type[ValueError]:
    """Return tomllib.TOMLDecodeError (importing tomllib)."""
    error: type[ValueError] = _tomllib().TOMLDecodeError
    return error


def headers_only(text: str) -> dict[str, Any] | None:
    """Return what tomllib makes of a text of comments, blank lines and distinct bare table
    headers; None for any other text (tomllib decides then)."""
    if _FORBIDDEN.search(text):
        return None
    doc: dict[str, Any] = {}
    seen: set[str] = set()
    for line in text.split("\n"):  # not splitlines(): TOML ends lines at LF (or CRLF) only
        stripped = line.strip(" \t\r")
        if not stripped or stripped.startswith("#"):
            continue
        m = _HEADER.fullmatch(stripped)
        if m is None or m.group(1) in seen:
            return None
        seen.add(m.group(1))
        node = doc
        for part in m.group(1).split("."):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # pragma: no cover - only tables are made here
                return None
            node = child
    return doc


def loads(text: str) -> dict[str, Any]:
    """Parse TOML as tomllib.loads does (raising its TOMLDecodeError)."""
    doc = headers_only(text)
    if doc is not None:
        return doc
    parsed: dict[str, Any] = _tomllib().loads(text)
    return parsed


def loads_cached(text: str, cache: str | None) -> dict[str, Any]:
    """Parse TOML, taking the result from ``cache`` (JSON written by :func:`cache_of`) when it
    was made from this very text."""
    if cache is not None:
        try:
            cached = json.loads(cache)
        except ValueError:
            cached = None
        if isinstance(cached, dict) and cached.get("source") == text and isinstance(
                cached.get("parsed"), dict):
            doc: dict[str, Any] = cached["parsed"]
            return doc
    return loads(text)


def cache_of(text: str) -> str:
    """Return the JSON cache of a TOML text: the text and tomllib's result."""
    parsed = _tomllib().loads(text)
    # JSON keeps only str, int, float, bool, lists and tables: a dated value would come back as
    # something else, so such a file gets no cache.
    if json.loads(json.dumps(parsed)) != parsed:
        raise ValueError("the TOML holds values JSON cannot keep (dates, times)")
    return json.dumps({"source": text, "parsed": parsed}, ensure_ascii=False, indent=1) + "\n"
