"""What a speculative answer cost, in the request record (docs/speculative.md, "Accounting").

``record.extra["speculative"]`` carries the round statistics, the measured costs, the
roofline (the speed-up bound those costs and this request's acceptance imply), the speed-up
the costs predict for the rounds actually run (``modelled_speedup``) and the one reached
(``reached_speedup``: emitted tokens times the measured decode step, over the decoding loop's
wall time).
In-process calls are summed into one ``verify`` CallRecord on the target and one ``draft``
CallRecord per model drafter; remote verification calls were recorded one by one as they
were made (:meth:`RequestContext.call_completion`). All are priced with ``Price.cost``.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.core.record import CallRecord
from gateway.core.strategy import RequestContext
from routers.speculative.controller import Controller
from routers.speculative.generation import Generation


def summary(generation: Generation, controller: Controller, mode: str) -> dict[str, Any]:
    stats = generation.stats
    out = stats.as_dict()
    out["mode"] = out["verifier"] = mode
    out["target_forward_passes" if mode == "local" else "target_calls"] = stats.target_passes
    costs = controller.costs
    out["costs"] = costs.as_dict() if costs is not None else None
    measured = {name: (s.accepted, s.rejections) for name, s in stats.drafters.items()}
    roofline = controller.roofline(measured)
    out["roofline"] = roofline
    out["roofline_speedup"] = max((r["speedup"] for r in roofline.values()), default=1.0)
    out["modelled_speedup"] = round(stats.emitted / stats.modelled_steps, 4) if stats.modelled_steps else None
    seconds = stats.wall_seconds
    out["reached_speedup"] = (round(stats.emitted * costs.decode_seconds / seconds, 4)
                              if costs is not None and seconds > 0 and stats.emitted else None)
    out["alpha"] = {name: round(controller.alpha(name), 4) for name in controller.acceptance}
    return out


def record_speculation(ctx: RequestContext, generation: Generation, controller: Controller, mode: str,
                       target: tuple[str, str], drafts: dict[str, str], wall: float, started: float
                       ) -> list[CallRecord]:
    """``target`` / ``drafts``: (backend name, model name) of the target and each model drafter.
    Returns the calls it recorded (priced)."""
    stats = generation.stats
    calls: list[CallRecord] = []
    if mode == "local":
        calls.append(CallRecord(
            backend=target[0], model=target[1], started_at=wall, purpose="verify",
            prompt_tokens=generation.prompt_tokens, completion_tokens=stats.emitted,
            latency_ms=(time.perf_counter() - started) * 1000, extra={"target_passes": stats.target_passes},
        ))
    for name, model in drafts.items():
        per = stats.drafters.get(name)
        if per is None or not per.rounds:
            continue
        calls.append(CallRecord(
            backend=name, model=model, started_at=wall, purpose="draft",
            prompt_tokens=generation.prompt_tokens, completion_tokens=per.drafted,
            latency_ms=per.seconds * 1000, extra={"draft_rounds": per.rounds},
        ))
    for call in calls:
        ctx.price_call(call)
        ctx.record.calls.append(call)
    ctx.record.extra["speculative"] = summary(generation, controller, mode)
    return calls
