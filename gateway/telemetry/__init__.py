"""OpenTelemetry traces of client requests, exported by OTLP/HTTP when configured (docs/observability.md)."""
