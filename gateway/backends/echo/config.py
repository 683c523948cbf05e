"""Policy configuration of an ``echo`` backend (the worked example of docs/extending.md)."""

from __future__ import annotations

from typing import ClassVar, Literal

from gateway.core.config import BackendConfigBase


class EchoBackend(BackendConfigBase):
    """Answers with the request's own last user message (or prompt), word by word.

    No model, no upstream, no cost: a smoke test of a deployment's routing, accounting and
    auth, and of the gateway's own overhead, with nothing behind it.
    """

    type: Literal["echo"]
    implementation: ClassVar[str] = "gateway.backends.echo.backend:EchoingBackend"

    prefix: str = ""  # words put before the echoed text, e.g. "echo:"
