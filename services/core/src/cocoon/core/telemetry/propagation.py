"""W3C trace context in Kafka record headers.

Kafka headers are a list of `(str, bytes)` pairs; OpenTelemetry's propagators speak str->str
carriers. These two functions are the only place that bridges them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate

Headers = list[tuple[str, bytes]]


def inject_headers(
    headers: Headers | None = None, ctx: otel_context.Context | None = None
) -> Headers:
    """Return `headers` plus `traceparent`/`tracestate` for the current (or given) context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    kept = [(k, v) for k, v in (headers or []) if k not in carrier]
    return kept + [(key, value.encode()) for key, value in carrier.items()]


def extract_context(headers: Sequence[tuple[str, bytes]] | Iterable | None) -> otel_context.Context:
    """The trace context carried by a record's headers (an empty context when there is none)."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("latin-1")
        carrier[key] = value
    return propagate.extract(carrier)
