"""Fixtures: a test CA, the registry test server on 127.0.0.1, and an agent config around them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evo_agent.config import Config, load
from tests.delivery.fixtures import VPNID, write_config, write_host_root
from tests.delivery.pki import Pki, make_pki
from tests.delivery.server import RegistryServer


@dataclass
class Agent:
    """An agent installation under tmp_path: config file, state dir and a host root."""

    config: Path
    state_dir: Path
    host_root: Path

    def load(self) -> Config:
        return load(self.config)

    def public_key(self) -> str:
        from evo_agent.delivery import signing

        return signing.public_b64(signing.load_or_create(self.state_dir))


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
