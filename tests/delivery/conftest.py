"""Fixtures: a test CA, the registry test server on 127.0.0.1, and an agent config around them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evo_agent.config import Config, load
from tests.delivery.pki import Pki, make_pki
from tests.delivery.server import RegistryServer

VPNID = "EVO-TEST-0042"


@dataclass
class Agent:
    """An agent installation under tmp_path: config file, state dir and a host root."""

    config: Path
    state_dir: Path
    host_root: Path

    def load(self) -> Config:
        return load(self.config)

    def public_key(self) -> str:
        from evo_agent import signing

        return signing.public_b64(signing.load_or_create(self.state_dir))


def write_host_root(root: Path, vpnid: str = VPNID) -> Path:
    """A minimal capture tree: what the identity collector reads."""
    (root / "etc" / "evo-agent").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "evo-agent" / "vpnid").write_text(vpnid + "\n")
    (root / "proc" / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "sys" / "kernel" / "hostname").write_text("evo-living-room\n")
    return root


def write_config(path: Path, state_dir: Path, host_root: Path, https_url: str, *, ca: Path,
                 extra: str = "") -> Path:
    path.write_text(f"""
[agent]
state_dir = "{state_dir}"
host_root = "{host_root}"
control_socket = "{state_dir.parent / 'control.sock'}"
[delivery]
https_url = "{https_url}"
ca_bundle = "{ca}"
connect_timeout = 2.0
total_timeout = 3.0
{extra}
""")
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "good")


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki-other"), "other")


@pytest.fixture
def server(pki: Pki) -> Iterator[RegistryServer]:
    srv = RegistryServer((pki.cert_pem, pki.key_pem))
    yield srv
    srv.stop()


@pytest.fixture
def agent(tmp_path: Path, server: RegistryServer, pki: Pki) -> Agent:
    state = tmp_path / "state"
    root = write_host_root(tmp_path / "root")
    cfg = write_config(tmp_path / "agent.toml", state, root, server.url, ca=pki.ca_pem)
    a = Agent(cfg, state, root)
    server.registry.enroll(VPNID, a.public_key())
    return a
