"""OpenTelemetry set-up and W3C trace-context propagation through Kafka headers."""
