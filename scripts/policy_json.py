#!/usr/bin/env python3
"""Write config/policy.json, the parsed form of config/policy.toml that the agent loads without
tomllib (see evo_agent/toml.py).  Run it after every change of policy.toml; a test says when.

    python3 scripts/policy_json.py
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evo_agent.toml import cache_of  # noqa: E402 - after the path is set


def main() -> int:
    source = REPO / "config" / "policy.toml"
    target = REPO / "config" / "policy.json"
    target.write_text(cache_of(source.read_text("utf-8")), "utf-8")
    print(f"{target} written from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
