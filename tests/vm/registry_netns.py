"""The registry the appliance VM reports to, run by the appliance test on the host side of its
network namespace (``ip netns exec NS python3 tests/vm/registry_netns.py ...``).

It is the delivery tests' registry (tests/delivery/server.py: POST /v1/reports, Ed25519
signature checked against the enrolled key, de-duplication by report UUID) behind TLS with a
test CA, listening on the LAN gateway address inside the namespace.  It records every answer
(status, report UUID, trigger, sequence) in ``--out/requests.jsonl`` *before* answering, and each
stored report in ``--out/<uuid>.json``, so the test can watch from outside.  ``--out/mode``, read
at each request, switches the misbehaviour of that server ("slow": hold the request, for the
power-cut check) without restarting it, so de-duplication spans the VM's reboots.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import ssl
import sys
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# Imported by name: the delivery tests (issue 3) bring it; the appliance test runs this script only
# when they are there (vmlib.delivery_available).
server: Any = importlib.import_module("tests.delivery.server")


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--enroll", nargs=2, metavar=("VPNID", "PUBKEY"), required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    reg = server.Registry()
    reg.enroll(*args.enroll)
    out: Path = args.out
    mode_file = out / "mode"

    base: Any = server._handler(reg)

    class Recording(base):  # type: ignore[misc]
        def do_POST(self) -> None:
            mode = mode_file.read_text().split() if mode_file.exists() else []
            self.evo_mode = mode[0] if mode else "ok"  # this request's, for its answer line
            # Read the whole body first, so that "request" means: it has all arrived (the power
            # cut then hits a report the registry holds, not one still on the wire).
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(min(length, server.MAX_WIRE + 1))
            self.rfile: Any = io.BytesIO(body)
            with (out / "requests.jsonl").open("a") as fh:
                fh.write(json.dumps({"event": "request", "mode": self.evo_mode,
                                     "bytes": len(body)}) + "\n")
            if self.evo_mode == "slow":
                time.sleep(float(mode[1]) if len(mode) > 1 else 30.0)
            reg.mode = "ok"
            super().do_POST()

        def _answer(self, status: int, doc: dict[str, Any],
                    extra: dict[str, str] | None = None) -> None:
            rid = doc.get("report_id")
            stored = reg.stored.get(rid) if rid else None
            line = {"event": "answer", "mode": getattr(self, "evo_mode", None),
                    "status": status, "report_id": rid,
                    "path": self.headers.get("X-Evo-Path"),
                    "trigger": stored.get("trigger") if stored else None,
                    "sequence": stored.get("sequence") if stored else None}
            with (out / "requests.jsonl").open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            if status == 201 and stored is not None:
                (out / f"{rid}.json").write_text(json.dumps(stored))
            super()._answer(status, doc, extra)

    httpd = ThreadingHTTPServer((args.host, args.port), Recording)
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    (out / "ready").write_text("1")
    httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
