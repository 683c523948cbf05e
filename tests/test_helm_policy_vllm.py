"""The Helm chart's policy ConfigMap, its vLLM small-model server, and the rendered gateway
container run for real (probes, drain on SIGTERM). Helpers: tests/helm_support.py."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helm_support import (
    FULLNAME,
    RELEASE,
    VALUE_SETS,
    check_policy_file,
    container,
    env_of,
    helm,
    kinds,
    load_chart,
    only,
    policy_of,
    render,
)


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    yield from load_chart()


# --- the policy ConfigMap ------------------------------------------------------------------------


def test_default_policy_is_valid_and_rendered_verbatim(chart: Any, tmp_path: Path) -> None:
    policy = policy_of(render(chart, {}))
    assert policy == chart.values["policy"]
    assert policy["backends"]["slm"] == {
        "type": "local", "model": "smollm2", "context_length": 8192, "price": {"input_per_1m": 0, "output_per_1m": 0},
    }
    assert policy["backends"]["llm"]["api_key_env"] == "OPENAI_API_KEY"
    assert check_policy_file(tmp_path, policy) == []


GIVEN_POLICY: dict[str, Any] = {
    "version": 1,
    "gateway": {"max_body_bytes": 65536, "reference_llm": "big", "store_prompts": True},
    "backends": {
        "small": {"type": "local", "model": "smollm2", "context_length": 4096,
                  "price": {"input_per_1m": 0.01, "output_per_1m": 0.02}},
        "big": {"type": "openai", "base_url": "https://llm.example/v1", "model": "large-1",
                "api_key_env": "OPENAI_API_KEY", "price": {"input_per_1m": 1.25, "output_per_1m": 5.5},
                "timeouts": {"connect": 3.0, "first_token": 30.0, "total": 120.0, "idle": 20.0}},
    },
    "models": {"fast": {"type": "static", "backend": "small"}, "smart": {"type": "static", "backend": "big"}},
}


def test_given_policy_is_rendered_verbatim(chart: Any, tmp_path: Path) -> None:
    # Helm merges values.policy into the chart's default map; null drops a default entry.
    values = {"policy": copy.deepcopy(GIVEN_POLICY)}
    values["policy"]["backends"] |= {"slm": None, "llm": None}
    values["policy"]["models"] |= {"slm": None, "llm": None}
    policy = policy_of(render(chart, values))
    assert policy == GIVEN_POLICY
    assert policy == chart.merge_values(values)["policy"]
    assert check_policy_file(tmp_path, policy) == []


def test_policy_yaml_replaces_the_policy_with_comments_kept(chart: Any, tmp_path: Path) -> None:
    text = "# our production policy\n" + yaml.safe_dump(GIVEN_POLICY, sort_keys=False)
    config_map = only(render(chart, {"policyYaml": text}), "ConfigMap")
    assert config_map["data"]["policy.yaml"].strip() == text.strip()
    assert yaml.safe_load(config_map["data"]["policy.yaml"]) == GIVEN_POLICY
    with pytest.raises(helm.HelmError, match="policyYaml"):
        render(chart, {"policyYaml": "- not\n- a mapping\n"})
    # vLLM on rewrites the given document too.
    values = {"policyYaml": text, "vllm": {"enabled": True, "policyBackend": "small"}}
    policy = policy_of(render(chart, values))
    assert policy["backends"]["small"]["base_url"] == f"http://{FULLNAME}-vllm:8000/v1"
    assert policy["backends"]["big"] == GIVEN_POLICY["backends"]["big"]
    assert check_policy_file(tmp_path, policy) == []


def test_invalid_policy_is_detected(tmp_path: Path) -> None:
    broken = {"version": 1, "backends": {"slm": {"type": "local", "modle": "smollm2"}},
              "models": {"slm": {"type": "static", "backend": "slm"}}}
    assert check_policy_file(tmp_path, broken) != []


def test_checksum_rolls_pods_only_when_the_policy_changes(chart: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = only(render(chart, values), "Deployment", FULLNAME)
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum({}) == base
    assert checksum({"gateway": {"replicaCount": 5}}) == base
    repriced = {"policy": {"backends": {"llm": {"price": {"input_per_1m": 3.0, "output_per_1m": 12.0}}}}}
    assert checksum(repriced) != base
    assert checksum({"vllm": {"enabled": True}}) != base  # the vLLM switch rewrites the policy too


# --- vLLM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("release", "service"), [(RELEASE, f"{FULLNAME}-vllm"), ("slm-gateway", "slm-gateway-vllm")])
def test_vllm_on_points_the_slm_backend_at_it(chart: Any, tmp_path: Path, release: str, service: str) -> None:
    docs = render(chart, VALUE_SETS["vllm"], release=release)
    policy = yaml.safe_load(
        next(d for d in docs if d["kind"] == "ConfigMap")["data"]["policy.yaml"]
    )
    assert policy["backends"]["slm"] == {
        "type": "openai",
        "base_url": f"http://{service}:8000/v1",
        "model": "smollm2",
        "context_length": 2048,
        "price": {"input_per_1m": 0, "output_per_1m": 0},
        "supports_prefix_continuation": True,
    }
    assert policy["backends"]["llm"] == chart.values["policy"]["backends"]["llm"]
    assert policy["models"] == chart.values["policy"]["models"]
    assert check_policy_file(tmp_path, policy) == []
    vllm_service = only(docs, "Service", service)
    assert [p["port"] for p in vllm_service["spec"]["ports"]] == [8000]


def test_vllm_deployment(chart: Any) -> None:
    values = {"vllm": {"enabled": True, "model": "/models/smollm2", "dtype": "bfloat16",
                       "extraArgs": ["--gpu-memory-utilization", "0.5"]}}
    docs = render(chart, values)
    deployment = only(docs, "Deployment", f"{FULLNAME}-vllm")
    vllm = container(deployment, "vllm")
    assert vllm["image"] == "vllm/vllm-openai:v0.33.0"
    args = vllm["args"]
    pairs = dict(zip(args[0::2], args[1::2], strict=False))
    assert pairs["--model"] == "/models/smollm2"
    assert pairs["--host"] == "0.0.0.0"
    assert pairs["--port"] == "8000"
    assert pairs["--max-model-len"] == "2048"
    assert pairs["--dtype"] == "bfloat16"
    assert pairs["--served-model-name"] == "smollm2"
    assert args[-2:] == ["--gpu-memory-utilization", "0.5"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = deployment["spec"]["template"]["spec"]
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    claim = only(docs, "PersistentVolumeClaim")
    assert weights["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # ReadWriteOnce weights
    assert env_of(vllm)["HF_HOME"]["value"] == "/models/hf"


def test_vllm_cpu_example_drops_the_gpu(chart: Any) -> None:
    vllm = container(only(render(chart, VALUE_SETS["vllm-cpu"]), "Deployment", f"{FULLNAME}-vllm"), "vllm")
    assert "nvidia.com/gpu" not in vllm["resources"]["requests"]
    assert "nvidia.com/gpu" not in vllm["resources"]["limits"]
    assert vllm["args"][-3:] == ["--dtype", "float32", "--enforce-eager"]
    assert env_of(vllm)["VLLM_CPU_KVCACHE_SPACE"]["value"] == "2"


def test_vllm_weights_volume_kinds(chart: Any) -> None:
    def weights(values: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
        docs = render(chart, {"vllm": {"enabled": True, "weights": values}})
        pod = only(docs, "Deployment", f"{FULLNAME}-vllm")["spec"]["template"]["spec"]
        return next(v for v in pod["volumes"] if v["name"] == "weights"), kinds(docs)

    volume, rendered = weights({"type": "hostPath", "hostPath": {"path": "/mnt/models"}})
    assert volume["hostPath"]["path"] == "/mnt/models" and "PersistentVolumeClaim" not in rendered
    volume, rendered = weights({"type": "emptyDir"})
    assert volume["emptyDir"] == {"sizeLimit": "20Gi"} and "PersistentVolumeClaim" not in rendered
    volume, rendered = weights({"type": "pvc", "pvc": {"existingClaim": "shared-models"}})
    assert volume["persistentVolumeClaim"]["claimName"] == "shared-models" and "PersistentVolumeClaim" not in rendered




# --- the rendered container, run for real -------------------------------------------------------


@pytest.mark.slow
def test_rendered_gateway_container_serves_probes_and_drains(chart: Any, tmp_path: Path) -> None:
    """Run the Deployment's exact command and environment (paths and port remapped to this
    machine, secretKeyRefs resolved from a stand-in Secret) against the real Redis: the probes the
    chart declares answer, the admin key from the Secret is enforced, and SIGTERM ends the process
    well inside terminationGracePeriodSeconds."""
    from gateway.backends.local.loader import default_cache_dir
    from tests.gateway_process import free_port

    admin_key = "test-admin-key-0123456789"
    secret = {"admin-key": admin_key, "openai-api-key": "sk-unused"}
    docs = render(chart, {"secrets": {"existingSecret": "gateway-keys"}})
    deployment = only(docs, "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    gateway = container(deployment, "gateway")
    (tmp_path / "policy.yaml").write_text(only(docs, "ConfigMap")["data"]["policy.yaml"])
    port = free_port()
    remap = {
        "/etc/slm-gateway/policy.yaml": str(tmp_path / "policy.yaml"),
        "8000": str(port),
        "/var/cache/slm-gateway": str(default_cache_dir().parent),  # reuse this machine's converted model
        "/var/lib/slm-gateway": str(tmp_path / "data"),
        "/tmp": str(tmp_path),
        f"redis://{FULLNAME}-redis:6379/0": "redis://127.0.0.1:6379/13",
    }
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "OPENAI_BASE_URL", "OPENAI_MODEL"}}
    for entry in gateway["env"]:
        if "valueFrom" in entry:
            env[entry["name"]] = secret[entry["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[entry["name"]] = remap.get(entry["value"], entry["value"])
    argv = [remap.get(arg, arg) for arg in [*gateway["command"], *gateway["args"]]]
    argv[0] = str(Path(sys.executable).with_name("slm-gateway"))
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            try:
                if httpx.get(base + gateway["readinessProbe"]["httpGet"]["path"], timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(1)
        assert httpx.get(base + gateway["livenessProbe"]["httpGet"]["path"]).status_code == 200
        assert httpx.get(base + gateway["startupProbe"]["httpGet"]["path"]).status_code == 200
        assert httpx.get(base + "/metrics").status_code == 401  # admin-only with auth on (docs/reliability.md)
        metrics = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {admin_key}"})
        assert metrics.status_code == 200 and metrics.text.startswith("#")
        assert httpx.get(base + "/v1/models").status_code == 401
        models = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {admin_key}"})
        assert models.status_code == 200
        assert {m["id"] for m in models.json()["data"]} == {"slm", "llm"}
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=pod["terminationGracePeriodSeconds"])
        assert time.monotonic() - started < pod["terminationGracePeriodSeconds"]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
