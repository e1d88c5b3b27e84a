"""Cocoon: a confidential AI inference network on Apache Kafka."""

__version__ = "0.1.0"
