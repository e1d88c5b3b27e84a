"""Structured logs: one JSON object per line, with the current span's trace and span ids.

The ids are read when the record is created (in a filter on the handler, which runs in the
logging call's own thread and context), so a record logged inside a span carries its ids.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

# LogRecord attributes that are not caller-supplied `extra=` fields.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "trace_id", "span_id", "service", "instance"}
)


class TraceContextFilter(logging.Filter):
    """Stamp `trace_id`/`span_id` (hex, empty outside a span) and the service identity."""

    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        record.service = self.service
        record.instance = self.instance
        return True


class JsonFormatter(logging.Formatter):
    """JSON lines with stable keys; `extra=` fields are kept as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", ""),
            "instance": getattr(record, "instance", ""),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(trace_id)s] %(message)s"


def configure_logging(
    service: str,
    instance: str,
    *,
    level: str = "INFO",
    fmt: str = "json",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route all logging to one handler on `stream` (stderr by default) in `fmt`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(TraceContextFilter(service, instance))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log every reconnect (httpx: every request) at INFO; WARNING unless debugging.
    if level != "DEBUG":
        for noisy in ("aiokafka", "kafka", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
