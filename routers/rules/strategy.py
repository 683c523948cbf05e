"""The ``rules`` strategy: privacy guard first, then the first matching rule picks a target.

A target is a backend (called through ``ctx.call_chat``, like ``static``) or another public
model (its strategy answers). Bare names resolve to a backend first, then a model; write
``backend:NAME`` or ``model:NAME`` to say which. Every decision is recorded:
``ctx.record.rule`` and the ``x-slm-gateway-rule`` header name the matched rule
(``default`` when none matched), ``ctx.record.extra["privacy"]`` lists the detectors that
fired and the action taken — never the matched text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.core.backend import TokenChunk, TokenLogprob
from gateway.core.errors import GatewayError, InvalidRequestError, PermissionDeniedError
from gateway.core.strategy import (
    ChatRequestView,
    GatewayResources,
    RequestContext,
    Strategy,
    StrategyEvent,
)
from policies.loader import PolicyError
from routers.privacy.guard import PrivacyFinding, inspect_request, redact_request
from routers.privacy.redaction import Redactor, StreamRestorer, ToolCallRestorer
from routers.rules.conditions import CompiledRule, RequestFacts, estimate_tokens
from routers.rules.config import RulesStrategy
from routers.targets import Target, answer_from, resolve_target

RULE_HEADER = "x-slm-gateway-rule"
PRIVACY_HEADER = "x-slm-gateway-privacy"
DEFAULT_RULE = "default"


class Rules(Strategy[RulesStrategy]):
    def __init__(self, public_name: str, config: RulesStrategy, resources: GatewayResources) -> None:
        super().__init__(public_name, config, resources)
        self.compiled = [CompiledRule(rule) for rule in config.rules]
        self._targets: dict[str, Target] = {}
        self._local: dict[Target, bool] = {}

    # --- policy-load time -----------------------------------------------------------------

    async def start(self) -> None:
        """Fail the policy load on a target that names nothing, or that delegates back to us."""
        problems = []
        for raw in self.config.targets():
            try:
                target = self.resolve(raw)
            except KeyError as exc:
                problems.append(str(exc.args[0]))
                continue
            if target.kind == "model" and self._reaches(target.name, self.public_name):
                problems.append(f"target {raw!r} delegates back to {self.public_name!r}")
        local = self.config.privacy.local_backend if self.config.privacy else None
        backends = self.resources.backends
        if local is not None and (local not in backends or not backends[local].is_local):
            problems.append(f"privacy.local_backend {local!r} is not a local backend")
        if problems:
            raise PolicyError(f"models.{self.public_name}", problems)

    def resolve(self, raw: str) -> Target:
        target = self._targets.get(raw) or resolve_target(raw, self.resources)
        if target is None:
            raise KeyError(f"target {raw!r} is neither a backend nor a model of this policy")
        self._targets[raw] = target
        return target

    def resolved_targets(self) -> list[Target]:
        """Every target that resolves (start() reports the ones that do not)."""
        resolved = []
        for raw in self.config.targets():
            try:
                resolved.append(self.resolve(raw))
            except KeyError:
                continue
        return resolved

    def delegates(self) -> tuple[list[str], list[str]]:
        backends, models = super().delegates()
        for target in self.resolved_targets():
            (backends if target.kind == "backend" else models).append(target.name)
        return backends, models

    def _model_targets(self, public: str) -> list[str]:
        strategy = self.resources.strategies.get(public)
        return strategy.delegates()[1] if strategy is not None else []

    def _reaches(self, start: str, goal: str) -> bool:
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(self._model_targets(node))
        return False

    def is_local(self, target: Target) -> bool:
        """True when no byte sent to ``target`` can leave the machine (every reachable backend is local)."""
        if target not in self._local:
            self._local[target] = self._compute_local(target, set())
        return self._local[target]

    def _compute_local(self, target: Target, seen: set[str]) -> bool:
        if target.kind == "backend":
            return self.resources.backend(target.name).is_local
        if target.name in seen:
            return True
        seen.add(target.name)
        backends, models = self.resources.strategies[target.name].delegates()
        if not backends and not models:
            return False  # a strategy we cannot see into is assumed to reach the cloud
        return all(self.resources.backend(b).is_local for b in backends) and all(
            self._compute_local(Target("model", m), seen) for m in models
        )

    def ready(self) -> bool:
        target = self.resolve(self.config.default)
        if target.kind == "backend":
            return self.resources.backend(target.name).ready
        return self.resources.strategies[target.name].ready()

    # --- per request ----------------------------------------------------------------------

    async def _count_tokens(self, raw_target: str, text: str) -> int:
        target = self.resolve(raw_target)
        backends = [target.name] if target.kind == "backend" else \
            self.resources.strategies[target.name].config.referenced_backends()
        for name in backends:
            try:
                ids = await self.resources.backend(name).tokenize(text)
            except GatewayError:  # e.g. the model is still loading: estimate instead of failing
                ids = None
            if ids is not None:
                return len(ids)
        return estimate_tokens(text)

    async def select(self, request: ChatRequestView, finding: PrivacyFinding) -> tuple[str, str]:
        """(rule name, raw target) of the first rule that matches, else the default."""
        facts = RequestFacts(request, lambda: finding.sensitive, self._count_tokens)
        for rule in self.compiled:
            if await rule.matches(facts):
                return rule.name, rule.target
        return DEFAULT_RULE, self.config.default

    def _local_fallback(self) -> Target | None:
        privacy = self.config.privacy
        if privacy is not None and privacy.local_backend is not None:
            return Target("backend", privacy.local_backend)
        local = [b for b in self.resources.backends.values() if b.is_local]
        ready = [b for b in local if b.ready]
        chosen = ready or local
        return Target("backend", chosen[0].name) if chosen else None

    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        privacy = self.config.privacy
        needs_scan = privacy is not None or any(r.when.sensitive is not None for r in self.compiled)
        finding = inspect_request(request, privacy) if needs_scan else PrivacyFinding()
        if finding.action == "block":
            self._record(ctx, "privacy", finding, {})
            raise InvalidRequestError(
                f"request blocked by the privacy policy of model {self.public_name!r}: it contains "
                f"{', '.join(finding.detectors)} data. Remove it and retry.",
                param="messages", code="sensitive_data_blocked",
            )
        rule, raw_target = await self.select(request, finding)
        target = self.resolve(raw_target)
        details: dict[str, Any] = {}
        redactor: Redactor | None = None
        if finding.action == "local_only" and not self.is_local(target):
            fallback = self._local_fallback()
            if fallback is None:
                self._record(ctx, rule, finding, {"refused": True})
                raise PermissionDeniedError(
                    f"request contains {', '.join(finding.detectors)} data, which the privacy policy of "
                    f"model {self.public_name!r} keeps on local models, and no local backend is configured",
                    param="messages", code="sensitive_data_requires_local",
                )
            details["rerouted_from"] = target.name
            target = fallback
        elif finding.action == "redact" and not self.is_local(target) and privacy is not None:
            request, redactor = redact_request(request, privacy.detectors)
            details["redacted"] = len(redactor.originals)
        self._record(ctx, rule, finding, details)
        events = self._dispatch(target, request, ctx)
        if redactor is not None:
            events = _restore_stream(events, redactor)
        async for event in events:
            yield event

    def _record(
        self, ctx: RequestContext, rule: str, finding: PrivacyFinding, details: dict[str, Any]
    ) -> None:
        # A rules model delegating to another rules model records the path: "outer>inner".
        ctx.record.rule = f"{ctx.record.rule}>{rule}" if ctx.record.rule else rule
        ctx.response_headers[RULE_HEADER] = ctx.record.rule
        if finding.sensitive:
            ctx.record.extra["privacy"] = {
                "detectors": list(finding.detectors), "action": finding.action, **details,
            }
            if finding.action is not None:
                ctx.response_headers[PRIVACY_HEADER] = finding.action

    async def _dispatch(
        self, target: Target, request: ChatRequestView, ctx: RequestContext
    ) -> AsyncIterator[StrategyEvent]:
        async for event in answer_from(target, request, ctx, self.resources):
            yield event


async def _restore_stream(
    events: AsyncIterator[StrategyEvent], redactor: Redactor
) -> AsyncIterator[StrategyEvent]:
    """Put redacted values back into the answer (its text and its tool calls' arguments),
    holding back placeholders cut by chunk boundaries; other fields of a chunk pass unchanged."""
    restorer = StreamRestorer(redactor)
    calls = ToolCallRestorer(redactor)
    logprobs: list[TokenLogprob] = []
    token_ids: list[int] = []
    async for event in events:
        if isinstance(event, TokenChunk):
            logprobs.extend(event.logprobs)
            token_ids.extend(event.token_ids)
            text = restorer.feed(event.text)
            tool_calls = calls.feed(event.tool_calls)
            if text or tool_calls or event.extra:
                yield TokenChunk(text, tuple(logprobs), tuple(token_ids), tool_calls, event.extra)
                logprobs.clear()
                token_ids.clear()
            continue
        tail = restorer.flush()
        tail_calls = calls.flush()
        if tail or tail_calls or logprobs or token_ids:
            yield TokenChunk(tail, tuple(logprobs), tuple(token_ids), tail_calls)
            logprobs.clear()
            token_ids.clear()
        yield event
