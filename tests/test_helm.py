"""The Helm chart (helm/slm-gateway): lint, Kubernetes schema validation, what is rendered,
Redis wiring, secrets by reference only, and the chart's own documentation.

Rendering and linting use Helm's own Go library through ``helm-python-sdk`` (no helm binary, no
cluster); every rendered object is validated against the Kubernetes OpenAPI schemas of the newest
version ``kubernetes-validate`` ships, in strict mode (unknown fields are errors).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.helm_support import (
    CHART,
    CRD_KINDS,
    FULLNAME,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    SENTINEL,
    VALUE_SETS,
    container,
    env_of,
    helm,
    kinds,
    kubernetes_validate,
    load_chart,
    manifests,
    only,
    render,
    render_files,
)


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    yield from load_chart()


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
    values = {"gateway": {"drainSeconds": 45, "preStopSleepSeconds": 7, "replicaCount": 3, "threads": 2}}
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
    assert env["SLM_GATEWAY_THREADS"]["value"] == "2"
    assert "SLM_GATEWAY_TORCH_THREADS" not in env  # the one thread setting of both engines
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
    assert "SLM_GATEWAY_THREADS" not in env_of(container(deployment, "gateway"))  # the gateway's own default
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 20 + 10


def test_renamed_torch_threads_value_is_refused(chart: Any) -> None:
    """`gateway.torchThreads` became `gateway.threads` (both engines): an old values file fails loudly."""
    with pytest.raises(helm.HelmValuesError, match="additional properties"):
        render_files(chart, {"gateway": {"torchThreads": 2}})


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
    assert "authorization" not in endpoint  # auth off: /metrics is open


def test_service_monitor_sends_the_admin_key_when_auth_is_on(chart: Any) -> None:
    # With an admin key the gateway answers /metrics with 401 to anyone without it.
    values = {**VALUE_SETS["servicemonitor"], "secrets": {"existingSecret": "gateway-keys"}}
    (endpoint,) = only(render(chart, values), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "gateway-keys", "key": "admin-key"},
    }


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
