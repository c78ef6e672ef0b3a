"""The registry the appliance VM talks to: the project's own ``evo-registry serve``, inside the
appliance test's network namespace, behind a small TLS-terminating proxy.

Why a proxy: ``evo-registry serve`` speaks plain HTTP (in production a front proxy terminates
TLS and passes the client's address in X-Forwarded-For, from an address listed in the
registry's ``trusted_proxies``).  The test does the same on a small scale: the registry listens
on 127.0.0.1 of the namespace (the namespace's own loopback, which the VM cannot reach), and this
proxy listens with the test CA's certificate on the LAN gateway address, forwards each request
with X-Forwarded-For set to the VM's address, and answers with the registry's answer.

The proxy is also the test's window on the wire: it records every request *once it has fully
arrived* and every answer (status, report UUID) in ``--out/requests.jsonl``, and ``--out/mode``
(read at each request) can make it hold a request ("slow SECONDS") before forwarding it, for
the power-cut check: the power is cut while the report is in flight, and the held request still
reaches the registry afterwards, as one in flight on the Internet would.  Everything the test
asserts about what was stored, it reads from the registry's own API (``get``).

    ip netns exec NS python3 registry_netns.py proxy --listen 192.0.2.1:8443 --cert C --key K \
        --upstream 127.0.0.1:8432 --out DIR
    ip netns exec NS python3 registry_netns.py get http://127.0.0.1:8432/v1/devices/ID TOKEN
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: Request headers not passed on (hop-by-hop, or set by the proxy itself).
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection",
       "x-forwarded-for", "host", "content-length"}
MAX_BODY = 2 * 1024 * 1024


def proxy(listen: str, cert: str, key: str, upstream: str, out: Path) -> None:
    """Serve until killed."""
    host, port = listen.rsplit(":", 1)
    up_host, up_port = upstream.rsplit(":", 1)
    mode_file = out / "mode"
    log = out / "requests.jsonl"

    def record(line: dict[str, Any]) -> None:
        with log.open("a") as fh:
            fh.write(json.dumps({**line, "t": round(time.time(), 3)}) + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            mode = mode_file.read_text().split() if mode_file.exists() else []
            this_mode = mode[0] if mode else "ok"
            length = int(self.headers.get("Content-Length", "0") or "0")
            body = self.rfile.read(min(length, MAX_BODY)) if length else b""
            record({"event": "request", "mode": this_mode, "method": self.command,
                    "path": self.path, "bytes": len(body)})
            if this_mode == "slow":
                time.sleep(float(mode[1]) if len(mode) > 1 else 30.0)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            headers["X-Forwarded-For"] = self.client_address[0]
            headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status, resp_headers = resp.status, resp.getheaders()
            finally:
                conn.close()
            try:
                doc = json.loads(data) if data[:1] == b"{" else {}
            except ValueError:
                doc = {}
            record({"event": "answer", "mode": this_mode, "method": self.command,
                    "path": self.path, "status": status, "report_id": doc.get("report_id"),
                    "answer": doc.get("status"), "via": self.headers.get("X-Evo-Path")})
            try:
                self.send_response(status)
                for k, v in resp_headers:
                    if k.lower() not in HOP and k.lower() not in ("date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client is gone (the power cut): the registry has answered anyway

        do_GET = do_POST = do_DELETE = _forward

    httpd = ThreadingHTTPServer((host, int(port)), Handler)
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    (out / "proxy-ready").write_text("1")
    httpd.serve_forever()


def get(url: str, token: str) -> int:
    """GET a registry URL with a bearer token; print {"status", "doc"} as JSON."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the test's own URL
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = data.decode("utf-8", "replace")
    print(json.dumps({"status": status, "doc": doc}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the proxy, or one GET."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    px = sub.add_parser("proxy")
    px.add_argument("--listen", required=True)
    px.add_argument("--cert", required=True)
    px.add_argument("--key", required=True)
    px.add_argument("--upstream", required=True)
    px.add_argument("--out", type=Path, required=True)
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("token")
    args = p.parse_args(argv)
    if args.cmd == "proxy":
        proxy(args.listen, args.cert, args.key, args.upstream, args.out)
        return 0
    return get(args.url, args.token)


if __name__ == "__main__":
    sys.exit(main())
