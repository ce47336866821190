"""Kafka I/O: thin confluent-kafka wrappers, topic admin and the local development broker."""
