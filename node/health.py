"""A small HTTP endpoint: GET /health (JSON) and GET /metrics (Prometheus text)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class HealthServer:
    """Serves `health()` as JSON on /health and `metrics()` as text on /metrics."""

    def __init__(self, host: str, port: int, health: Callable[[], dict], metrics: Callable[[], str]) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/health":
                    report = owner.health()
                    body = json.dumps(report).encode()
                    code = 200 if report.get("status") == "ok" else 503
                    kind = "application/json"
                elif self.path == "/metrics":
                    body, code, kind = owner.metrics().encode(), 200, "text/plain; version=0.0.4"
                else:
                    body, code, kind = b"not found\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http %s", format % args)

        self.health = health
        self.metrics = metrics
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="livernode-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return self._server.server_address[1]

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
