"""The learned router: real all-MiniLM-L6-v2 embeddings, train/eval CLI round trip, artifact
fidelity, offline loading, and the ``learned`` strategy routing real requests in a gateway.

The data is hand-made: "hard" questions (advanced maths, strong model needed) and "easy" ones
(capitals, both models right), so a working router must separate them on held-out rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import TypeAdapter

from policies.schema import StrategyConfig
from routers.learned.config import LearnedStrategy
from routers.learned.embedder import Embedder, bundled_model_dir
from routers.learned.offline.cli import main as router_cli
from routers.learned.offline.data import load_labelled
from routers.learned.offline.embedding_cache import embed_cached
from routers.learned.offline.training import ThresholdTarget, threshold_for_escalation, train_router
from routers.learned.router import LearnedRouter

HARD = [
    "Evaluate the contour integral of exp(z)/(z^{k}+1) around the circle |z|=3 using residues.",
    "Prove that every finite integral domain with {k} elements is a field and find its characteristic.",
    "Compute the Galois group of x^{k} - 2 over the rationals and list its normal subgroups.",
    "Find the eigenvalues of the {k}x{k} tridiagonal matrix with 2 on the diagonal and -1 beside it.",
    "Solve the differential equation y'' + {k}y' + 2y = sin(t) with y(0)=0 and y'(0)=1 by Laplace transform.",
]
EASY = [
    "What is the capital of {c}?", "Which continent is {c} on?", "What language do people speak in {c}?",
    "Name the currency used in {c}.",
]
COUNTRIES = ["France", "Japan", "Brazil", "Kenya", "Canada", "Italy", "Egypt", "Peru", "Norway", "India",
             "Spain", "Chile"]


def _rows(ks: range, countries: list[str]) -> list[dict[str, Any]]:
    rows = [{"question": q.format(k=k), "weak_correct": False, "strong_correct": True}
            for q in HARD for k in ks]
    rows += [{"question": q.format(c=c), "weak_correct": True, "strong_correct": True}
             for q in EASY for c in countries]
    # Some both-wrong rows: escalating them recovers nothing, a router should not need them.
    rows += [{"question": f"What number am I thinking of between 1 and {k}?", "choices": ["1", "2"],
              "weak_correct": False, "strong_correct": False} for k in ks]
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("router-data")
    train = _write(root / "train.jsonl", _rows(range(3, 9), COUNTRIES[:8]))
    held_out = _write(root / "held_out.jsonl", _rows(range(11, 15), COUNTRIES[8:]))
    return train, held_out


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_train_eval_round_trip_through_the_cli(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    train, held_out = files
    out = tmp_path / "router"
    assert router_cli(["router", "train", "--data", str(train), "--out", str(out),
                       "--target", "escalation=0.4", "--model", "logreg"]) == 0
    meta = json.loads((out / "router.json").read_text())
    assert meta["classifier"] == "logreg" and meta["target_escalation"] == 0.4
    assert meta["training"]["rows"] == 30 + 32 + 6
    capsys.readouterr()

    plot = tmp_path / "curve.png"
    assert router_cli(["router", "eval", "--router", str(out), "--data", str(held_out), "--json",
                       "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 20 + 16 + 4
    # Held-out questions of the same kinds: the router ranks the 20 hard ones first, which is the
    # oracle's curve: (0, weak) -> (0.5, strong) -> (1, strong), APGR 1 - 0.5/2.
    assert result["apgr"] == pytest.approx(0.75, abs=0.03)
    assert result["random"]["apgr"] == pytest.approx(0.5, abs=0.1)
    assert result["cpt50"] == pytest.approx(0.25, abs=0.05)
    assert result["cpt80"] < 0.5
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["logreg", "knn", "mlp"])
def test_saved_router_scores_like_the_trained_one(
    kind: str, files: tuple[Path, Path], embedder: Embedder, tmp_path: Path,
) -> None:
    train, held_out = files
    data, test = load_labelled(train), load_labelled(held_out)
    vectors = embed_cached(data.texts, lambda: embedder, progress=False)
    params = {"k": 5} if kind == "knn" else {}
    router = train_router(data, vectors, kind=kind, target=ThresholdTarget(escalation=0.5),  # type: ignore[arg-type]
                          calibration_folds=3, **params)
    loaded = LearnedRouter.load(router.save(tmp_path / kind), embedder=embedder)
    test_vectors = embedder.embed(test.texts)
    np.testing.assert_allclose(loaded.score_embeddings(test_vectors), router.score_embeddings(test_vectors),
                               atol=1e-3)  # kNN stores float16 points
    assert loaded.threshold == router.threshold
    scores = loaded.score_many(test.texts)
    hard = test.labels("strong_only")
    assert scores[hard].mean() > scores[~hard].mean()
    assert loaded.needs_strong(float(scores[hard].max()))


def test_embeddings_match_the_sentence_transformers_pipeline(embedder: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["What is the capital of France?", "Prove that sqrt(2) is irrational. " * 40]
    reference = SentenceTransformer(str(bundled_model_dir()), device="cpu").encode(texts)
    ours = embedder.embed(texts)
    assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert (ours * reference).sum(axis=1) == pytest.approx(1.0, abs=1e-4)


def test_router_loads_and_scores_offline(files: tuple[Path, Path], tmp_path: Path) -> None:
    router_dir = tmp_path / "router"
    assert router_cli(["router", "train", "--data", str(files[0]), "--out", str(router_dir)]) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"))
    code = ("import sys; from routers.learned.router import LearnedRouter; "
            "print(LearnedRouter.load(sys.argv[1]).score('Compute the Galois group of x^5 - 2.'))")
    done = subprocess.run([sys.executable, "-c", code, str(router_dir)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert 0.0 <= float(done.stdout.strip()) <= 1.0


def test_broken_router_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "router.json").write_text("{}")
    with pytest.raises(ValueError, match="not a learned-router directory"):
        LearnedRouter.load(tmp_path)


def test_threshold_targets() -> None:
    assert ThresholdTarget.parse("escalation=0.3") == ThresholdTarget(escalation=0.3)
    assert ThresholdTarget.parse("threshold=0.7") == ThresholdTarget(threshold=0.7)
    for bad in ("escalation", "share=0.3", "escalation=1.5", "threshold=x"):
        with pytest.raises(ValueError):
            ThresholdTarget.parse(bad)
    scores = np.linspace(0, 1, 1001)
    assert (scores >= threshold_for_escalation(scores, 0.3)).mean() == pytest.approx(0.3, abs=0.002)
    assert not (scores >= threshold_for_escalation(scores, 0.0)).any()


def test_policy_config() -> None:
    config = TypeAdapter(StrategyConfig).validate_python(
        {"type": "learned", "router_dir": "r", "weak": "backend:slm", "strong": "model:big"})
    assert isinstance(config, LearnedStrategy)
    assert config.threshold is None and config.embed == "last_user"
    assert config.referenced_backends() == ["slm"] and config.referenced_models() == ["big"]
    with pytest.raises(ValueError):
        TypeAdapter(StrategyConfig).validate_python(
            {"type": "learned", "router_dir": "r", "weak": "a", "strong": "b", "threshold": 2})


# --- the strategy inside a real gateway ------------------------------------------------------


@pytest.fixture(scope="module")
def routed_gateway(model_cache: None, files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[Any]:
    from tests.inprocess import InProcessGateway

    workdir = tmp_path_factory.mktemp("learned-gw")
    router_dir = workdir / "router"
    assert router_cli(["router", "train", "--data", str(files[0]), "--out", str(router_dir)]) == 0
    policy = {
        "version": 1,
        "backends": {"slm": {"type": "local", "model": "smollm2", "max_batch_size": 4}},
        "models": {
            "slm": {"type": "static", "backend": "slm"},
            "big": {"type": "static", "backend": "slm"},  # stands in for the large model
            "auto": {"type": "learned", "router_dir": str(router_dir), "threshold": 0.5,
                     "weak": "backend:slm", "strong": "model:big"},
        },
    }
    server = InProcessGateway(policy, workdir).start()
    yield server
    server.stop()


@pytest.mark.parametrize(("question", "tier"), [
    ("Compute the Galois group of x^7 - 2 over the rationals and list its normal subgroups.", "strong"),
    ("What is the capital of Portugal?", "weak"),
])
def test_strategy_routes_real_requests(routed_gateway: Any, question: str, tier: str) -> None:
    before = len(routed_gateway.sink.records)
    response = httpx.post(f"{routed_gateway.url}/v1/chat/completions", timeout=120, json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": question}]})
    assert response.status_code == 200, response.text
    score = float(response.headers["x-slm-gateway-router-score"])
    assert response.headers["x-slm-gateway-router-target"] == tier
    assert (score >= 0.5) == (tier == "strong")
    record = routed_gateway.wait_records(before + 1)[-1]
    assert record.extra["router_score"] == pytest.approx(score, abs=1e-4)
    assert record.extra["router_threshold"] == 0.5
