"""A small registry for tests: docs/protocol.md's POST /v1/reports on 127.0.0.1, HTTP or HTTPS.

It verifies the Ed25519 signature over the body as received with the key enrolled for the VPNID,
checks the headers and sizes, de-duplicates by report UUID, and can misbehave on demand
(``mode``): "500", "503", "429" (with Retry-After), "slow" (answers after ``delay`` seconds),
"reset" (reads half the body, then resets the connection).  The project's registry replaces it in
the end-to-end test.  Used by tests/delivery/test_*.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_WIRE, MAX_JSON = 64 * 1024, 1024 * 1024


class Registry:
    """State shared by the handler threads."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.stored: dict[str, dict[str, Any]] = {}  # report UUID -> report
        self.accepted: Counter[str] = Counter()  # report UUID -> 201 answers
        self.duplicates: Counter[str] = Counter()
        self.requests: list[tuple[float, int, str]] = []  # (time, status, path header)
        self.objections: list[dict[str, Any]] = []  # POST /v1/objection, as received
        self.mode = "ok"
        self.delay = 0.0
        self.retry_after = "120"
        self.lock = threading.Lock()

    def enroll(self, vpnid: str, public_b64: str) -> None:
        self.keys[vpnid] = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))


def _handler(reg: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, doc: dict[str, Any], extra: dict[str, str] | None = None
                    ) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            with reg.lock:
                reg.requests.append((time.monotonic(), status, self.headers.get("X-Evo-Path", "")))

        def do_POST(self) -> None:
            if self.path == "/v1/objection" and reg.mode == "ok":
                self._objection(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                return
            if self.path != "/v1/reports":
                self._answer(404, {"error": "no such endpoint"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            if reg.mode == "reset":
                self.rfile.read(max(1, length // 2))
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                with reg.lock:
                    reg.requests.append((time.monotonic(), 0, "reset"))
                return
            if length > MAX_WIRE:
                self._answer(413, {"error": "body over 64 KiB"})
                return
            body = self.rfile.read(length)
            if reg.mode == "slow":
                time.sleep(reg.delay)
            if reg.mode in ("400", "409", "415"):
                self._answer(int(reg.mode), {"error": "refused for good (test)"})
                return
            if reg.mode in ("500", "503"):
                self._answer(int(reg.mode), {"error": "test failure"})
                return
            if reg.mode == "429":
                self._answer(429, {"error": "too often"}, {"Retry-After": reg.retry_after})
                return
            self._report(body)

        def _objection(self, body: bytes) -> None:
            key = reg.keys.get(self.headers.get("X-Evo-Vpnid", ""))
            try:
                if key is None:
                    raise InvalidSignature
                key.verify(base64.b64decode(self.headers.get("X-Evo-Signature", ""),
                                            validate=True), body)
            except (InvalidSignature, ValueError):
                self._answer(401, {"error": "unknown vpnid or signature wrong"})
                return
            message = json.loads(gzip.decompress(body))
            with reg.lock:
                reg.objections.append(message)
            self._answer(200, {"status": "objected" if message["objects"] else "withdrawn",
                               "vpnid": message["vpnid"], "changed": True})

        def _report(self, body: bytes) -> None:
            vpnid = self.headers.get("X-Evo-Vpnid")
            if not vpnid:
                self._answer(400, {"error": "X-Evo-Vpnid missing"})
                return
            key = reg.keys.get(vpnid)
            if key is None:
                self._answer(404, {"error": "unknown vpnid"})
                return
            try:
                key.verify(base64.b64decode(self.headers.get("X-Evo-Signature", ""),
                                            validate=True), body)
            except (InvalidSignature, ValueError):
                self._answer(401, {"error": "signature missing or wrong"})
                return
            if self.headers.get("Content-Encoding") != "gzip":
                self._answer(400, {"error": "not gzip"})
                return
            try:
                data = gzip.decompress(body)
                if len(data) > MAX_JSON:
                    self._answer(413, {"error": "over 1 MiB expanded"})
                    return
                report = json.loads(data)
                rid = str(uuid.UUID(report["report_id"]))
            except (OSError, EOFError, ValueError, KeyError, TypeError):
                self._answer(400, {"error": "not gzip JSON with a report_id"})
                return
            if report.get("functional", {}).get("vpnid") != vpnid:
                self._answer(400, {"error": "functional.vpnid differs from X-Evo-Vpnid"})
                return
            with reg.lock:
                if rid in reg.stored:
                    reg.duplicates[rid] += 1
                    status = 200
                else:
                    reg.stored[rid] = report
                    reg.accepted[rid] += 1
                    status = 201
            self._answer(status, {"status": "accepted" if status == 201 else "duplicate",
                                  "report_id": rid})

    return Handler


class RegistryServer:
    """A running registry on 127.0.0.1 (an ephemeral port), optionally with TLS."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.registry = Registry()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.registry))
        self.httpd.daemon_threads = True
        # a client killed mid-exchange (the crash test does that on purpose) is not news
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_main(argv: list[str] | None = None) -> int:
    """Run the server in its own process (e.g. inside a network namespace made by a test).

    Each stored report is written to ``--out/<uuid>.json`` and each answer appended to
    ``--out/requests.jsonl`` (status and X-Evo-Path), so the test can watch from outside.
    """
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--enroll", nargs=2, metavar=("VPNID", "PUBKEY"), required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    reg = Registry()
    reg.enroll(*args.enroll)
    out: Path = args.out

    class Recording(_handler(reg)):  # type: ignore[misc]
        def _answer(self, status: int, doc: dict[str, Any],
                    extra: dict[str, str] | None = None) -> None:
            super()._answer(status, doc, extra)
            # the request line first: a test that sees the report file may read it at once
            with (out / "requests.jsonl").open("a") as fh:
                fh.write(json.dumps({"status": status,
                                     "path": self.headers.get("X-Evo-Path")}) + "\n")
            if status == 201:
                rid = doc["report_id"]
                tmp = out / f".{rid}.tmp"
                tmp.write_text(json.dumps(reg.stored[rid]))
                tmp.rename(out / f"{rid}.json")

    httpd = ThreadingHTTPServer((args.host, args.port), Recording)
    (out / "ready").write_text("1")
    httpd.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_main())
