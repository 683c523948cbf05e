"""ASGI entry point for uvicorn (``gateway.asgi:create_app``, a factory: one app per worker)."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.app import build_app
from gateway.settings import GatewaySettings


def create_app() -> FastAPI:
    return build_app(GatewaySettings.from_env(), handle_signals=True)
