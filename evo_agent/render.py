"""Readable renderings of a report for people at a terminal (technicians, the line)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from evo_agent.policy import Policy


def _fmt(value: Any, key: str = "") -> str:
    """Return a value for people; sizes (fields named ``bytes`` or ``*_bytes``) in GiB or MiB."""
    if value is None:
        return "-"
    name = key.rpartition(".")[2]
    if (name == "bytes" or name.endswith("_bytes")) and type(value) is int and value > 0:
        if value >= 1 << 30:
            return f"{value / (1 << 30):.3g} GiB"
        return f"{value / (1 << 20):.3g} MiB"
    return str(value)


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, sub, rows)
    elif isinstance(value, list):
        rows.append((prefix, f"{len(value)} item(s)"))
        for item in value:
            pairs = item.items() if isinstance(item, dict) else [("", item)]
            shown = "  ".join(_fmt(v, k) for k, v in pairs)
            rows.append(("", f"- {shown}"))
    else:
        rows.append((prefix, _fmt(value, prefix)))


def report_table(report: dict[str, Any]) -> str:
    """Return the report as two aligned columns, section by section."""
    lines = [f"evo-inventory report (schema {report['schema']}, policy {report['policy_version']}, "
             f"trigger {report['trigger']}, {report['collected_at']})"]
    for section in ("functional", "hardware"):
        rows: list[tuple[str, str]] = []
        _flatten("", report[section], rows)
        width = max((len(k) for k, _ in rows), default=0)
        lines.append("")
        lines.append(section.capitalize())
        # list items go under their heading, indented, rather than in the value column
        lines += [f"  {k:<{width}}  {v}".rstrip() if k else f"    {v}" for k, v in rows]
    lines.append("")
    lines.append("Collectors")
    for name, c in report["collectors"].items():
        err = f"  ({c['error']})" if c["error"] else ""
        lines.append(f"  {name:<10} {c['status']:<8} {c['duration_ms']:>6} ms{err}")
    return "\n".join(lines) + "\n"


def explain_rows(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    """Return one row per declared field: path, value, policy line, section, purposes."""
    rows = []
    for rule in policy.fields:
        node: Any = report
        for part in rule.report.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        rows.append({
            "field": rule.report,
            "value": node,
            "source": f"{rule.collector}.{rule.key}",
            "policy_line": rule.line,
            "section": policy.sections[rule.section]["heading"],
            "purposes": list(rule.purposes),
        })
    return rows


def explain_text(rows: list[dict[str, Any]], policy: Policy, dropped: Counter[str]) -> str:
    """Return the explain rows as text, then what the registry derives and what is not sent."""
    out = [f"What leaves this device, and why (privacy policy of {policy.version})", ""]
    for r in rows:
        value = r["value"]
        shown = f"{len(value)} item(s)" if isinstance(value, list) else _fmt(value, r["field"])
        out.append(f"{r['field']} = {shown}")
        out.append(f"    policy: \"{r['policy_line']}\" ({r['section']})")
        for purpose in r["purposes"]:
            out.append(f"    purpose: {purpose}")
    out.append("")
    out.append("Derived by the registry, never sent by the device:")
    for d in policy.derived:
        out.append(f"  \"{d.line}\": {d.by}")
    out.append("")
    if dropped:
        out.append("Collected on this device but never sent (not in the policy):")
        out += [f"  {name} ({count})" for name, count in sorted(dropped.items())]
    else:
        out.append("Nothing else was collected.")
    return "\n".join(out) + "\n"
