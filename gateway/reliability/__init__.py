"""Reliability machinery: per-stage timeouts, retries, circuit breakers (docs/reliability.md)."""
