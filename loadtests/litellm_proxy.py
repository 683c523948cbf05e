"""LiteLLM proxy for the overhead comparison: its own venv, a config pointing at the fake upstream.

LiteLLM goes into ``~/.cache/slm-gateway/litellm-venv`` (never into the project venv: its proxy
extra pins its own fastapi/uvicorn/pydantic). ``LITELLM_LOCAL_MODEL_COST_MAP=True`` keeps it
from fetching its price table over the network at start.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

# 1.77.5 (Sept 2025) installs here with Python 3.11 and predates the reported compromised releases.
LITELLM_VERSION = "1.77.5"
VENV_DIR = Path.home() / ".cache" / "slm-gateway" / "litellm-venv"


def _installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.stdout.strip() or None if probe.returncode == 0 else None


def ensure_litellm(version: str = LITELLM_VERSION, venv: Path = VENV_DIR) -> Path:
    """Create the venv and install ``litellm[proxy]==version`` unless already there; return the CLI path."""
    if _installed_version(venv) != version:
        venv.parent.mkdir(parents=True, exist_ok=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        print(f"installing litellm[proxy]=={version} into {venv} (once; a few minutes)", file=sys.stderr)
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"litellm[proxy]=={version}",
            ],
            check=True,
            timeout=1800,
        )
    return venv / "bin" / "litellm"


def write_config(path: Path, *, upstream_base_url: str, upstream_model: str, public_model: str) -> Path:
    config = {
        "model_list": [
            {
                "model_name": public_model,
                "litellm_params": {
                    "model": f"openai/{upstream_model}",
                    "api_base": upstream_base_url,
                    "api_key": "sk-fake-upstream",
                },
            }
        ],
        "litellm_settings": {"drop_params": True, "telemetry": False},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proxy_command(litellm_cli: Path, config: Path, port: int, workers: int = 1) -> list[str]:
    return [
        str(litellm_cli),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        str(workers),
    ]


def proxy_env() -> dict[str, str]:
    return {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
