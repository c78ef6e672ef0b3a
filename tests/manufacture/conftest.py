"""Fixtures of the manufacturing tests: the real registry on 127.0.0.1, a station's config.

The registry is evo_registry's app served by its own server on a free loopback port, over a real
SQLite database in the test's directory (tests/registry/conftest.py's ``Server``).  The agent
talks to it through its own HTTP client: nothing is mocked.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evo_registry.app import Registry
from evo_registry.config import Settings
from evo_registry.db import Database
from tests.registry.conftest import FACTORY, SUPPORT, Reply, Server

__all__ = ["FACTORY", "SUPPORT", "Station"]


class Station:
    """One test station: its config file, state directory and factory token."""

    def __init__(self, root: Path, registry_url: str, **bom: Any) -> None:
        self.root = root
        self.state = root / "state"
        self.vpnid_file = root / "etc" / "vpnid"
        self.token = root / "factory.token"
        self.token.write_text(FACTORY + "\n")
        self.config = root / "agent.toml"
        values = {"expected_audio": "HDA Intel PCH", "min_ram_bytes": 8 << 30,
                  "sales_region": ["BE", "NL", "LU"], "psu_variant": "230V",
                  "model": "432 EVO Aeon", "registry_url": registry_url,
                  "factory_token_file": str(self.token), "timeout": 5.0, **bom}
        lines = ["[agent]", f'state_dir = "{self.state}"', "[collectors.identity]",
                 f'vpnid_file = "{self.vpnid_file}"', "[manufacture]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")


def free_closed_port() -> int:
    """Return a loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(database=f"sqlite:///{tmp_path / 'registry.db'}",
                        factory_tokens=[FACTORY], support_tokens=[SUPPORT])
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db)
    srv = Server(app)
    yield srv
    srv.close()
    app.close()
    db.close()


@pytest.fixture
def registry_url(registry: Server) -> str:
    return f"http://127.0.0.1:{registry.port}"


@pytest.fixture
def station(tmp_path: Path, registry_url: str) -> Station:
    root = tmp_path / "station"
    root.mkdir()
    return Station(root, registry_url)


def device(server: Server, vpnid: str) -> Reply:
    return server.request("GET", f"/v1/devices/{vpnid}",
                          headers={"Authorization": f"Bearer {SUPPORT}"})
