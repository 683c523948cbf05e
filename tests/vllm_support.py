"""The vLLM tier's parts (tests/test_vllm_integration.py): a ``scripts/vllm-cpu serve`` process, a
server someone else started, and the policy that puts vLLM behind the gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_process import REPO, free_port

SCRIPT = REPO / "scripts" / "vllm-cpu"
SERVED_NAME = "smollm2"


def vllm_venv() -> Path:
    return Path(os.environ.get("VLLM_VENV", Path.home() / ".cache" / "slm-gateway" / "vllm-venv"))


class VLLMServer:
    """``scripts/vllm-cpu serve`` on a free loopback port, in its own process group."""

    def __init__(self, model_dir: Path, *, port: int | None = None) -> None:
        self.model_dir = model_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkdtemp(prefix="slmgw-vllm-")) / "vllm.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 900.0) -> VLLMServer:
        started = time.monotonic()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process owns it
        # A new session: vLLM forks an engine-core process, and stop() must end both.
        self.process = subprocess.Popen(
            [str(SCRIPT), "serve", "--port", str(self.port), "--model", str(self.model_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vLLM not up after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def speculative_registered() -> bool:
    """True once routers/speculative has a registered strategy (it may land after this tier)."""
    from policies.schema import StrategyConfig
    from routers.registry import StrategyRegistry

    return "speculative" in StrategyRegistry(StrategyConfig).types()


def vllm_policy(vllm_url: str, *, speculative: bool = False) -> dict[str, Any]:
    """``slm`` = vLLM over HTTP, ``local`` = the same weights in-process, plus cascades over both
    (and, with ``speculative``, vLLM as the verifier of a truncated in-process draft)."""
    policy: dict[str, Any] = {
        "version": 1,
        "backends": {
            "slm": {"type": "openai", "base_url": f"{vllm_url}/v1", "model": SERVED_NAME,
                    "supports_prefix_continuation": True,
                    "timeouts": {"connect": 5.0, "first_token": 120.0, "total": 300.0, "idle": 120.0}},
            # The transformers engine: the same float32 weights vLLM serves (llama.cpp, the default,
            # runs the quantised GGUF: its logprobs differ by up to ~0.1, docs/engines.md).
            "local": {"type": "local", "model": "smollm2", "engine": "transformers", "max_batch_size": 4},
        },
        "models": {
            "slm": {"type": "static", "backend": "slm"},
            "local": {"type": "static", "backend": "local"},
            # vLLM first: its logprobs decide. Thresholds pin the outcome (a mean logprob is <= 0).
            "cascade-accept": {"type": "cascade", "mode": "buffer", "top_logprobs": 3, "tiers": [
                {"backend": "slm", "threshold": -100.0}, {"backend": "local"}]},
            "cascade-escalate": {"type": "cascade", "mode": "buffer", "tiers": [
                {"backend": "slm", "threshold": 1.0}, {"backend": "local"}]},
            # In-process first; the running check fails once 4 tokens are in (mean < 0), so
            # vLLM continues the answer after exactly 3 local tokens.
            "cascade-handoff": {"type": "cascade", "mode": "handoff", "tiers": [
                {"backend": "local", "threshold": -100.0, "early_exit": {"window": 4, "floor": 0.0}},
                {"backend": "slm"}]},
        },
    }
    if speculative:
        policy["backends"]["draft"] = {"type": "local", "model": "smollm2", "engine": "transformers",
                                      "num_layers": 8, "max_batch_size": 1}
        policy["models"]["spec-vllm"] = {"type": "speculative", "target": "slm", "draft": {"backend": "draft"},
                                         "mode": "verify", "k": 4}
    return policy


class RunningVLLM(VLLMServer):
    """A vLLM server someone else started (``VLLM_TEST_URL``): used as is, never stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(Path("unused"), port=0)
        self.url = url.rstrip("/")

    def stop(self) -> None:
        return None
