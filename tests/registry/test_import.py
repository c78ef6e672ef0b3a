"""``evo-registry import``: offline enrolment bundles get the live enrolment's checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from pathlib import Path
from typing import Any

from evo_registry.cli import main
from evo_registry.db import Database
from evo_registry.store import Store
from tests.registry.conftest import FACTORY, Device


def bundle(device: Device, request: dict[str, Any], *, mac_key: str = FACTORY,
           signer: Device | None = None) -> bytes:
    body = json.dumps(request).encode()
    return json.dumps({
        "format": "evo-enrolment-bundle/1",
        "vpnid": request.get("vpnid"),
        "request": base64.b64encode(body).decode(),
        "signature": (signer or device).sign(body),
        "factory_mac": base64.b64encode(hmac.new(mac_key.encode(), body,
                                                 hashlib.sha256).digest()).decode(),
    }).encode()


def _run(tmp_path: Path, db_url: str, files: list[Path]) -> tuple[int, str]:
    cfg = tmp_path / "registry.toml"
    cfg.write_text(f'database = "{db_url}"\nfactory_tokens = ["{FACTORY}"]\n')
    out = io.StringIO()
    code = main(["import", "--config", str(cfg), *map(str, files)], out=out)
    return code, out.getvalue()


def test_import_good_and_bad_bundles(tmp_path: Path, db_url: str) -> None:
    good = Device("EVO-800001")
    forged = Device("EVO-800002")
    wrong_token = Device("EVO-800003")
    invalid = Device("EVO-800004")
    files = {
        "good": bundle(good, good.enrolment()),
        # signed by another key than the one it enrols: no proof the station held the key
        "forged": bundle(forged, forged.enrolment(), signer=Device("EVO-X")),
        "token": bundle(wrong_token, wrong_token.enrolment(), mac_key="not-the-factory"),
        "invalid": bundle(invalid, {**invalid.enrolment(), "psu_variant": "lots"}),
        "garbage": b"\x00not json",
    }
    paths = []
    for name, data in files.items():
        path = tmp_path / f"{name}.evo-enrol.json"
        path.write_bytes(data)
        paths.append(path)
    code, out = _run(tmp_path, db_url, [*paths, tmp_path / "absent.json"])
    assert code == 65  # EX_DATAERR: some were refused
    lines = out.splitlines()
    assert lines[0].startswith("imported") and "EVO-800001" in lines[0]
    assert all(line.startswith("refused") for line in lines[1:])
    assert "signature does not match" in lines[1]
    assert "factory token" in lines[2]
    assert "psu_variant" in lines[3]
    assert "not an enrolment bundle" in lines[4]
    assert "cannot be read" in lines[5]
    db = Database(db_url)
    store = Store(db)
    assert store.counts()["devices"] == 1
    assert store.public_key("EVO-800001") == good.public_key
    db.close()


def test_import_twice_is_unchanged_and_reenrolment_needs_override(tmp_path: Path,
                                                                   db_url: str) -> None:
    dev = Device("EVO-800010")
    path = tmp_path / "b.json"
    path.write_bytes(bundle(dev, dev.enrolment()))
    assert _run(tmp_path, db_url, [path])[0] == 0
    code, out = _run(tmp_path, db_url, [path])
    assert (code, out.split()[0]) == (0, "unchanged")
    # Another key for the same VPNID: refused unless the bundle says override.
    other = Device(dev.vpnid)
    again = tmp_path / "again.json"
    again.write_bytes(bundle(other, other.enrolment()))
    code, out = _run(tmp_path, db_url, [again])
    assert code == 65
    assert "already enrolled" in out
    again.write_bytes(bundle(other, other.enrolment(override=True)))
    assert _run(tmp_path, db_url, [again])[0] == 0
    db = Database(db_url)
    assert Store(db).public_key(dev.vpnid) == other.public_key
    db.close()
