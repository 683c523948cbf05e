"""The thread count of in-process models: the cores the process really gets, then measured."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.backends.local.threads import available_cores, choose_threads


def _cgroup(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def test_available_cores_is_affinity_capped_by_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(_cgroup(tmp_path, "max 100000")) == affinity
    assert available_cores(_cgroup(tmp_path, "50000 100000")) == 1  # half a core: one thread
    assert available_cores(_cgroup(tmp_path, "150000 100000")) == min(affinity, 2)
    assert available_cores(tmp_path / "missing") == affinity


def test_a_configured_count_is_used_as_is() -> None:
    def measure(threads: int) -> float:
        raise AssertionError("measured although configured")

    assert choose_threads("b", 3, measure, cores=8) == 3


def test_one_core_needs_no_measurement() -> None:
    assert choose_threads("b", None, lambda n: pytest.fail("measured"), cores=1) == 1


@pytest.mark.parametrize(("per_step", "expected"), [({1: 0.010, 4: 0.004}, 4), ({1: 0.010, 4: 0.030}, 1)])
def test_the_faster_of_one_and_all_cores_wins(per_step: dict[int, float], expected: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.backends.local.threads"):
        assert choose_threads("slm", None, per_step.__getitem__, cores=4) == expected
    assert f"backend slm: {expected} thread(s)" in caplog.text


def test_the_engine_measures_real_decode_steps() -> None:
    """The llama.cpp engine's timing hook (run before its worker starts) decodes for real and
    leaves its scratch sequence empty."""
    from gateway.backends.local.llamacpp.engine import LlamaCppEngine, LlamaCppOptions
    from gateway.backends.local.source import smollm2_gguf

    engine = LlamaCppEngine(smollm2_gguf(), LlamaCppOptions(kv_tokens=256, max_running=2, cache_slots=0,
                                                           prefill_chunk=64, threads=1))
    try:
        assert 0 < engine.time_decode(1) < 5
        assert all(engine._ctx.seq_pos_max(seq) == -1 for seq in range(2))
    finally:
        engine.stop()
