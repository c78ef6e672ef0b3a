"""schemathesis against the served OpenAPI document, over HTTP on loopback: never a 5xx.

Generated requests go to a real server (SQLite, then PostgreSQL) with one enrolled device; half of
them carry a valid support token, so the handlers behind the authorisation are reached too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from evo_registry.app import Registry
from evo_registry.config import Settings
from tests.registry.conftest import FACTORY, SUPPORT, Device, Server, enroll

SPEC = Path(__file__).resolve().parents[2] / "evo_registry" / "openapi.json"
schema = schemathesis.openapi.from_path(str(SPEC))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('st') / 'registry.db'}"
    else:
        url = request.getfixturevalue("pg_server").create_database()
    app = Registry(Settings(database=url, factory_tokens=[FACTORY],
                            support_tokens=[SUPPORT], rate_limit_reports=1000))
    app.db.migrate()
    srv = Server(app)
    dev = Device("EVO-600001")
    assert enroll(srv, dev).status == 201
    yield srv
    srv.close()
    app.close()
    app.db.close()


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_server_errors(case: object, live: Server) -> None:
    base = f"http://127.0.0.1:{live.port}"
    for headers in ({}, {"Authorization": f"Bearer {SUPPORT}"}):
        response = case.call(base_url=base, headers=headers)  # type: ignore[attr-defined]
        assert response.status_code < 500, (response.status_code, response.text[:300])
