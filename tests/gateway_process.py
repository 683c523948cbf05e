"""Start real ``slm-gateway serve`` processes for tests (loopback only, always cleaned up)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayProcess:
    """A gateway subprocess serving ``policy`` on a free loopback port."""

    def __init__(self, policy: dict[str, Any] | Path, *, env: dict[str, str] | None = None,
                 name: str = "gateway", extra_args: list[str] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"slmgw-{name}-"))
        if isinstance(policy, Path):
            self.policy_path = policy
        else:
            self.policy_path = self.workdir / "policy.yaml"
            self.write_policy(policy)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "server.log"
        self.env = dict(os.environ)
        self.env.pop("REDIS_URL", None)
        self.env.update({"SLM_GATEWAY_DATA_DIR": str(self.workdir / "data"), "PYTHONUNBUFFERED": "1",
                         "SLM_GATEWAY_DRAIN_SECONDS": "5"})
        self.env.update(env or {})
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    def write_policy(self, policy: dict[str, Any]) -> None:
        self.policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))

    def start(self, timeout: float = 240.0) -> GatewayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(self.policy_path),
             "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def smollm2_policy(**extra_models: Any) -> dict[str, Any]:
    """The in-process SmolLM2 alone, as public model ``slm``."""
    return {
        "version": 1,
        "backends": {"slm": {"type": "local", "model": "smollm2", "max_batch_size": 8}},
        "models": {"slm": {"type": "static", "backend": "slm"}, **extra_models},
    }


def two_tier_policy(upstream_url: str, upstream_model: str = "slm") -> dict[str, Any]:
    """``slm`` in-process and ``llm`` behind an OpenAI-compatible upstream (another gateway)."""
    return {
        "version": 1,
        "gateway": {"reference_llm": "llm"},
        "backends": {
            "slm": {"type": "local", "model": "smollm2", "price": {"input_per_1m": 0.0, "output_per_1m": 0.0}},
            "llm": {"type": "openai", "base_url": f"{upstream_url}/v1", "model": upstream_model,
                    "supports_prefix_continuation": True,
                    "price": {"input_per_1m": 2.5, "output_per_1m": 10.0},
                    "timeouts": {"connect": 2.0, "first_token": 30.0, "total": 60.0, "idle": 30.0}},
        },
        "models": {"slm": {"type": "static", "backend": "slm"}, "llm": {"type": "static", "backend": "llm"}},
    }
