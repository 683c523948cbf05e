"""Ramp load shape, selected with ``LOADTEST_SHAPE=ramp`` (see locustfile.py).

``LOADTEST_RAMP`` lists stages as ``end_s:users[:spawn_rate]`` separated by commas, each
stage ending at ``end_s`` seconds from the start; the test stops after the last stage.
Default: 10 users to 30 s, 50 to 60 s, 100 to 90 s, then back to 10 until 120 s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from locust import LoadTestShape

DEFAULT_RAMP = "30:10,60:50,90:100,120:10"


@dataclass(frozen=True)
class Stage:
    end_s: float
    users: int
    spawn_rate: float


def parse_stages(spec: str) -> list[Stage]:
    stages = []
    for part in spec.split(","):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"bad ramp stage {part!r}: want end_s:users[:spawn_rate]")
        users = int(fields[1])
        rate = float(fields[2]) if len(fields) == 3 else max(1.0, users / 5)
        stages.append(Stage(float(fields[0]), users, rate))
    if [s.end_s for s in stages] != sorted(s.end_s for s in stages):
        raise ValueError("ramp stages must be in increasing end time")
    return stages


class RampShape(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.stages = parse_stages(os.environ.get("LOADTEST_RAMP", DEFAULT_RAMP))

    def tick(self) -> tuple[int, float] | None:
        run_time = self.get_run_time()  # type: ignore[no-untyped-call]
        for stage in self.stages:
            if run_time < stage.end_s:
                return stage.users, stage.spawn_rate
        return None
