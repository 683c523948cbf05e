"""Policy validation, the `policy check` command, and SIGHUP reload."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from policies.loader import PolicyError, check_policy, load_policy, parse_policy
from routers.cascade.config import CascadeStrategy
from routers.learned.config import LearnedStrategy
from tests.gateway_process import REPO, GatewayProcess, smollm2_policy

SHIPPED = sorted((REPO / "policies").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_are_valid(path: Path) -> None:
    assert check_policy(path) == []


def test_unknown_keys_and_bad_references_are_reported_with_paths(tmp_path: Path) -> None:
    bad = {
        "version": 1,
        "gateway": {"reference_llm": "ghost"},
        "backends": {"slm": {"type": "local", "model": "smollm2"}},
        "models": {"a": {"type": "static", "backend": "nowhere"}},
    }
    with pytest.raises(PolicyError) as info:
        parse_policy(bad)
    assert "gateway.reference_llm: unknown backend 'ghost'" in info.value.problems
    assert any(p.startswith("models.a: unknown backend 'nowhere'") for p in info.value.problems)
    typo = {"backends": {"slm": {"type": "local", "modle": "x"}}, "models": {}}
    with pytest.raises(PolicyError) as info:
        parse_policy(typo)
    assert info.value.problems == ["backends.slm.local.modle: Extra inputs are not permitted"]
    with pytest.raises(PolicyError) as info:
        parse_policy({"backends": {"x": {"type": "quantum"}}, "models": {}})
    assert "backends.x" in info.value.problems[0]


def test_policy_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(smollm2_policy()))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "backends:\n  slm: {type: local, price: {input_per_1m: -1}}\nmodels:\n  m: {type: static, backend: b}\n"
    )
    run = [sys.executable, "-m", "gateway.cli", "policy", "check"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1
    assert "backends.slm.local.price.input_per_1m" in failed.stdout


def test_default_policy_loads() -> None:
    policy = load_policy()
    assert set(policy.models) == {"slm", "llm", "slm-embed", "auto"}
    assert policy.backends["llm"].type == "openai"
    assert policy.backends["embed"].type == "embedding"
    assert policy.backends["slm"].defaults.as_dict() == {"temperature": 0.2, "top_p": 0.9}


def _model_ids(process: GatewayProcess) -> set[str]:
    return {m["id"] for m in httpx.get(f"{process.url}/v1/models").json()["data"]}


def test_sighup_reload_accepts_valid_and_rejects_invalid(model_cache: None) -> None:
    process = GatewayProcess(smollm2_policy(), name="reload").start()
    try:
        assert _model_ids(process) == {"slm"}
        process.write_policy(smollm2_policy(tiny={"type": "static", "backend": "slm"}))
        process.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _model_ids(process) != {"slm", "tiny"} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _model_ids(process) == {"slm", "tiny"}
        process.policy_path.write_text("models: {broken: {type: static, backend: missing}}\nbackends: {}\n")
        process.signal(signal.SIGHUP)
        time.sleep(1.5)
        assert "policy reload rejected" in process.log()
        assert _model_ids(process) == {"slm", "tiny"}
        answer = httpx.post(f"{process.url}/v1/chat/completions", timeout=60,
                            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert answer.status_code == 200
    finally:
        process.stop()


def test_relative_router_dirs_resolve_against_the_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy_dir = tmp_path / "conf"
    policy_dir.mkdir()
    (policy_dir / "p.yaml").write_text(yaml.safe_dump({
        "version": 1,
        "backends": {"slm": {"type": "local"}, "llm": {"type": "openai", "base_url": "http://x/v1", "model": "m"}},
        "models": {
            "auto": {"type": "learned", "router_dir": "routers/r1", "weak": "backend:slm", "strong": "backend:llm"},
            "abs": {"type": "learned", "router_dir": str(tmp_path / "elsewhere"), "weak": "backend:slm",
                    "strong": "backend:llm"},
            "cascade": {"type": "cascade", "tiers": [{"backend": "slm", "threshold": 0.5}, {"backend": "llm"}],
                        "router": {"router_dir": "../shared-router", "low": 0.2, "high": 0.8}},
        },
    }))
    monkeypatch.chdir(tmp_path)  # a working directory that is not the policy's
    policy = load_policy(policy_dir / "p.yaml")
    auto, absolute, cascade = (policy.models[name] for name in ("auto", "abs", "cascade"))
    assert isinstance(auto, LearnedStrategy) and isinstance(absolute, LearnedStrategy)
    assert auto.router_dir == str(policy_dir / "routers" / "r1")
    assert absolute.router_dir == str(tmp_path / "elsewhere")
    assert isinstance(cascade, CascadeStrategy) and cascade.router is not None
    assert cascade.router.router_dir == str(policy_dir / ".." / "shared-router")
