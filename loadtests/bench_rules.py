"""Cost of the ``rules`` strategy's decision per request: privacy scan + rule evaluation.

Measures, for a ~2 kB chat prompt, (a) all six detectors over the request, (b) rule
selection over the example policy's seven rules with the chars/4 token estimate,
(c) the same with SmolLM2's real tokenizer for ``prompt_tokens`` (loaded offline; skipped
with ``--no-tokenizer``), and (d) redacting a request that carries an e-mail and a card.
No model generation is involved: this is the routing overhead added before the first token.

    .venv/bin/python -m loadtests.bench_rules [--iterations 2000] [--no-tokenizer]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.core.backend import (
    Backend,
    ChatMessage,
    CompletionPrompt,
    GenerationEvent,
    SamplingParams,
)
from gateway.core.strategy import ChatRequestView, GatewayResources
from loadtests.bench_report import machine_line, write_section
from policies.loader import load_policy
from routers.privacy.guard import inspect_request, redact_request
from routers.rules.config import RulesStrategy
from routers.rules.strategy import Rules

EXAMPLE_POLICY = Path(__file__).resolve().parent.parent / "policies" / "examples" / "rules.yaml"
TARGET_MS = 0.3
PROSE = "The quick brown fox jumps over the lazy dog, again and again. "
# Digit-heavy on purpose (dates, versions, ids): the worst case for the number detectors.
PARAGRAPH = (
    "Our quarterly report covers revenue, churn and the roadmap for 2024-01-15 to 2024-03-31. "
    "Version 10.0.19041 of the client shipped; see ticket 12345 and the notes in section 4.2. "
)


class TimingBackend(Backend):
    """A backend that only tokenizes (with a real tokenizer, or not at all)."""

    def __init__(self, name: str, local: bool, tokenizer: Any = None) -> None:
        super().__init__(name)
        self._local = local
        self._tokenizer = tokenizer

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def is_local(self) -> bool:
        return self._local

    async def tokenize(self, text: str) -> list[int] | None:
        if self._tokenizer is None:
            return None
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError

    def stream_completion(
        self, prompt: CompletionPrompt, params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        raise NotImplementedError


def prompt(size: int = 2048, sensitive: bool = False, paragraph: str = PARAGRAPH) -> ChatRequestView:
    text = (paragraph * (size // len(paragraph) + 1))[:size]
    if sensitive:
        text = text[: size - 60] + " mail jane.roe@example.com card 4111 1111 1111 1111."
    messages = [ChatMessage(role="system", content="You are a helpful assistant."),
                ChatMessage(role="user", content=text)]
    return ChatRequestView(messages=messages, params=SamplingParams(), stream=False)


def time_us(fn: Callable[[], Any], iterations: int) -> tuple[float, float]:
    """(median, p99) microseconds per call."""
    samples = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def time_async_us(make: Callable[[], Awaitable[Any]], iterations: int) -> tuple[float, float]:
    loop = asyncio.new_event_loop()
    try:
        return time_us(lambda: loop.run_until_complete(make()), iterations)
    finally:
        loop.close()


def build_rules(tokenizer: Any) -> Rules:
    policy = load_policy(EXAMPLE_POLICY)
    config = policy.models["auto"]
    assert isinstance(config, RulesStrategy)
    backends = {"slm": TimingBackend("slm", True, tokenizer), "llm": TimingBackend("llm", False)}
    resources = GatewayResources(backends=backends, prices={})
    rules = Rules("auto", config, resources)
    resources.strategies["auto"] = rules
    return rules


def run(iterations: int, with_tokenizer: bool) -> list[tuple[str, float, float]]:
    clean, sensitive = prompt(), prompt(sensitive=True)
    assert config_privacy(build_rules(None)) is not None
    prose = prompt(paragraph=PROSE)
    rows = [("detectors, 2 kB prose prompt", *time_us(lambda: inspect_request(prose, None), iterations)),
            ("detectors, 2 kB digit-heavy prompt",
             *time_us(lambda: inspect_request(clean, None), iterations)),
            ("detectors, 2 kB prompt with e-mail + card",
             *time_us(lambda: inspect_request(sensitive, None), iterations))]
    estimate = build_rules(None)
    finding = inspect_request(clean, config_privacy(estimate))

    async def decide(rules: Rules) -> None:
        await rules.select(clean, inspect_request(clean, config_privacy(rules)))

    rows.append(("scan + 7 rules, chars/4 estimate", *time_async_us(lambda: decide(estimate), iterations)))
    rows.append(("7 rules only (scan excluded)",
                 *time_async_us(lambda: estimate.select(clean, finding), iterations)))
    if with_tokenizer:
        from gateway.backends.local.loader import load_model

        _, tokenizer = load_model("smollm2")
        real = build_rules(tokenizer)
        rows.append(("scan + 7 rules, SmolLM2 tokenizer", *time_async_us(lambda: decide(real), iterations)))
    kinds = ("email", "phone", "payment_card", "iban", "national_id", "secret")
    rows.append(("redact request (e-mail + card)",
                 *time_us(lambda: redact_request(sensitive, kinds), iterations)))
    return rows


def config_privacy(rules: Rules) -> Any:
    return rules.config.privacy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--no-tokenizer", action="store_true", help="skip the SmolLM2-tokenizer row")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    rows = run(args.iterations, not args.no_tokenizer)
    lines = ["| step (per request) | median ms | p99 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {median / 1000:.3f} | {p99 / 1000:.3f} |" for name, median, p99 in rows]
    table = "\n".join(lines)
    print(table)
    decision = next(median for name, median, _ in rows if name.startswith("scan + 7 rules, chars/4")) / 1000
    met = "met" if decision < TARGET_MS else "NOT met"
    verdict = f"target < {TARGET_MS} ms for scan + rules: {met} ({decision:.3f} ms)"
    print(verdict)
    if not args.no_write:
        write_section("rules", "\n".join([
            "## Rules strategy and privacy detectors",
            "",
            f"Routing decision cost for a 2 kB prompt, {args.iterations} iterations, single thread "
            f"({machine_line()}; the machine is shared, so treat p99 as noisy). {verdict}.",
            "",
            table,
            "",
            "Reproduce: `.venv/bin/python -m loadtests.bench_rules`",
        ]))


if __name__ == "__main__":
    main()
