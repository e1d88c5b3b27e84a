"""The Kafka bus: Avro-coded producers and consumers with tracing and dead letters."""
