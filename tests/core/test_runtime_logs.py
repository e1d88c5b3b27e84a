"""Every log record carries the trace and span ids of the span it was logged in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from cocoon.core.runtime.logs import configure_logging
from cocoon.core.telemetry import install_memory_exporter


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_current_trace(restore_root_logging):
    install_memory_exporter()
    stream = io.StringIO()
    configure_logging("billing", "billing-7", level="INFO", fmt="json", stream=stream)
    logger = logging.getLogger("cocoon.billing.test")

    with trace.get_tracer("test").start_as_current_span("charge") as span:
        logger.info("charged %s", "42 nanoton", extra={"request_id": "r-1"})
    logger.warning("outside any span")

    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["message"] == "charged 42 nanoton"
    assert (inside["service"], inside["instance"], inside["request_id"]) == (
        "billing",
        "billing-7",
        "r-1",
    )
    assert inside["level"] == "INFO" and inside["logger"] == "cocoon.billing.test"
    assert outside["trace_id"] == "" and outside["level"] == "WARNING"


def test_human_format_shows_the_trace_id(restore_root_logging):
    install_memory_exporter()
    stream = io.StringIO()
    configure_logging("gateway", "gw-1", level="DEBUG", fmt="human", stream=stream)
    with trace.get_tracer("test").start_as_current_span("request") as span:
        logging.getLogger("cocoon.gateway").debug("accepted")
    line = stream.getvalue().strip()
    assert f"[{format(span.get_span_context().trace_id, '032x')}] accepted" in line
    assert " DEBUG " in line
