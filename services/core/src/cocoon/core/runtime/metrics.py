"""Prometheus metrics every service shares, and the `/metrics` HTTP endpoint.

Metric names are fixed here so the Grafana dashboards (deploy/grafana) work for every service;
a service adds its own metrics with prometheus_client directly, prefixed `cocoon_<service>_`.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, start_http_server

SERVICE_INFO = Info("cocoon_service", "Identity of this service process")
SERVICE_READY = Gauge("cocoon_service_ready", "1 while the service is ready for work", ["service"])
MESSAGES = Counter(
    "cocoon_messages_processed",
    "Kafka records handled, by outcome (ok, error, dead_letter)",
    ["service", "topic", "outcome"],
)
PROCESSING_SECONDS = Histogram(
    "cocoon_message_processing_seconds",
    "Time to handle one Kafka record",
    ["service", "topic"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("cocoon_messages_in_flight", "Records being handled right now", ["service"])


class MetricsServer:
    """`GET /metrics` in Prometheus text format, served from a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        self._server, self._thread = start_http_server(
            self._requested_port, addr=self._host, registry=REGISTRY
        )
        self.port = self._server.server_port
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
