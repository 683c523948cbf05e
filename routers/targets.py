"""Delegation targets shared by the strategies that pick one: a backend or another public model.

A policy names a target as ``NAME``, ``backend:NAME`` or ``model:NAME``; a bare name is the
backend when one exists, else the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from gateway.core.backend import GenerationDone
from gateway.core.config import split_target
from gateway.core.strategy import AnswerDone, ChatRequestView, GatewayResources, RequestContext, StrategyEvent


@dataclass(frozen=True, slots=True)
class Target:
    kind: Literal["backend", "model"]
    name: str


def resolve_target(raw: str, resources: GatewayResources) -> Target | None:
    """The target ``raw`` names in this policy, or None when it names nothing."""
    kind, name = split_target(raw)
    if kind in (None, "backend") and name in resources.backends:
        return Target("backend", name)
    if kind in (None, "model") and name in resources.strategies:
        return Target("model", name)
    return None


def target_ready(target: Target, resources: GatewayResources) -> bool:
    if target.kind == "backend":
        return resources.backend(target.name).ready
    return resources.strategies[target.name].ready()


async def answer_from(
    target: Target, request: ChatRequestView, ctx: RequestContext, resources: GatewayResources
) -> AsyncIterator[StrategyEvent]:
    """The target's answer: a delegate strategy's events, or one recorded backend call."""
    ctx.set_route(target.name)  # a delegate strategy may refine it with its own route
    if target.kind == "model":
        async for event in resources.strategies[target.name].chat(request, ctx):
            yield event
        return
    async for generated in ctx.call_chat(target.name, request.messages, request.params):
        if isinstance(generated, GenerationDone):
            yield AnswerDone.of(generated)
        else:
            yield generated
