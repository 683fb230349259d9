"""Observability adapters: logging, Prometheus collectors, tracing."""
