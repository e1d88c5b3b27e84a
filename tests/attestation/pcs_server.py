"""A tiny PCS API v4 server on 127.0.0.1 serving fixture responses (for PcsSource tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

Route = tuple[dict[str, str], bytes]


def chain_header(pem: str) -> str:
    # PCS sends issuer chains URL-encoded in a header.
    return quote(pem, safe="")


def signed_body(key: str, raw_json: str, signature_hex: str) -> bytes:
    return ('{"' + key + '":' + raw_json + ',"signature":"' + signature_hex + '"}').encode()


@contextmanager
def pcs_server(routes: dict[str, Route]) -> Iterator[tuple[str, list[str]]]:
    """Serve `routes` (path with query -> (headers, body)); yields (base URL, request log)."""
    log: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            log.append(self.path)
            route = routes.get(self.path)
            if route is None:
                self.send_response(404)
                self.end_headers()
                return
            headers, body = route
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
