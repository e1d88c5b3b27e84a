"""Kafka plumbing: the local broker, broker selection and topic provisioning."""
