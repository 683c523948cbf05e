"""Policy configuration of an ``openai`` backend (registered by its ``type`` tag)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from gateway.core.config import BackendConfigBase


class OpenAIBackend(BackendConfigBase):
    """Any OpenAI-compatible server (vLLM, a cloud API, another slm-gateway).

    ``base_url_env`` / ``model_env`` / ``api_key_env`` name environment variables; when a
    variable is set it wins over the literal ``base_url`` / ``model``. A backend whose base
    URL or model resolves to nothing is *unconfigured*: the gateway starts, warns once, and
    answers requests for it with 503.
    """

    type: Literal["openai"]
    implementation: ClassVar[str] = "gateway.backends.openai.backend:OpenAICompatibleBackend"

    base_url: str | None = None
    base_url_env: str | None = None
    model: str | None = None
    model_env: str | None = None
    api_key_env: str | None = None
    max_connections: int = Field(100, ge=1)
    supports_prefix_continuation: bool = Field(
        False, description="Server continues an assistant prefix (vLLM, slm-gateway) over /v1/completions."
    )


