"""Property tests: the policy loader never fails with anything but PolicyError, valid policies
round-trip through YAML, and our SSE encoder and decoder are inverse of each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backends.sse import DONE, decode_events, encode_event
from policies.loader import PolicyError, parse_policy
from policies.schema import Policy

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)

# Keys the schema knows, so random documents reach the deep validators, not only "extra key".
KNOWN_KEYS = ["version", "gateway", "backends", "models", "fallbacks", "type", "backend", "model", "base_url",
              "timeouts", "retry", "circuit_breaker", "price", "tiers", "rules", "first_token", "max_attempts",
              "failure_threshold", "error_rate", "window", "cooldown_s", "input_per_1m", "static", "local",
              "openai", "cascade", "rules", "learned", "default", "threshold", "scorer"]
keys = st.sampled_from(KNOWN_KEYS) | names
policy_like = st.recursive(scalars | st.sampled_from(["static", "local", "openai", "slm", "llm"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=5),
                           max_leaves=30)


def _loads_or_policy_error(data: Any) -> None:
    try:
        result = parse_policy(data)
    except PolicyError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(result, Policy)


@FAST
@given(json_values)
def test_random_documents_only_raise_policy_error(data: Any) -> None:
    _loads_or_policy_error(data)


@FAST
@given(st.dictionaries(keys, policy_like, max_size=6))
def test_policy_shaped_documents_only_raise_policy_error(data: dict[str, Any]) -> None:
    _loads_or_policy_error(data)


@st.composite
def valid_policies(draw: st.DrawFn) -> dict[str, Any]:
    backend_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    backends: dict[str, Any] = {}
    for name in backend_names:
        reliability = {
            "timeouts": {"connect": draw(st.floats(0.1, 30)), "first_token": draw(st.floats(0.1, 300)),
                         "total": draw(st.floats(0.1, 600)), "idle": draw(st.floats(0.1, 300))},
            "retry": {"max_attempts": draw(st.integers(1, 10)), "initial_backoff_s": draw(st.floats(0, 5)),
                      "max_backoff_s": draw(st.floats(0, 30))},
            "circuit_breaker": {"failure_threshold": draw(st.integers(1, 100)),
                                "error_rate": draw(st.floats(0.01, 1.0)), "window": draw(st.integers(2, 500)),
                                "cooldown_s": draw(st.floats(0.1, 600))},
        }
        if draw(st.booleans()):
            backends[name] = {"type": "local", "model": "smollm2", **reliability}
        else:
            backends[name] = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": name,
                              "price": {"input_per_1m": draw(st.floats(0, 100)),
                                        "output_per_1m": draw(st.floats(0, 100))}, **reliability}
    model_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    models = {m: {"type": "static", "backend": draw(st.sampled_from(backend_names))} for m in model_names}
    fallbacks: dict[str, list[str]] = {}
    for model in model_names:
        others = [m for m in model_names if m != model]
        wants_fallback: bool = draw(st.booleans())
        if others and wants_fallback:
            chain: list[str] = draw(st.lists(st.sampled_from(others), min_size=1, max_size=len(others), unique=True))
            fallbacks[model] = chain
    return {"version": 1, "backends": backends, "models": models, "fallbacks": fallbacks}


@FAST
@given(valid_policies())
def test_valid_policies_round_trip_through_yaml(data: dict[str, Any]) -> None:
    policy = parse_policy(data)
    dumped = yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)
    again = parse_policy(yaml.safe_load(dumped))
    assert again == policy
    assert again.fallbacks == data["fallbacks"]


# --- SSE ----------------------------------------------------------------------------------------

json_objects = st.dictionaries(
    st.text(max_size=12),
    st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text()
                 | st.floats(allow_nan=False, allow_infinity=False),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=15),
    max_size=5,
)


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    """``data`` cut at arbitrary offsets, as a network delivers it."""
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        if cut > start:
            yield data[start:cut]
            start = cut


async def _decode(data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    return [payload async for payload in decode_events(_chunks(data, cuts))]


@FAST
@given(st.lists(json_objects, max_size=5), st.booleans(), st.lists(st.integers(min_value=0), max_size=12),
       st.booleans())
def test_sse_encode_decode_round_trip(
    payloads: list[dict[str, Any]], with_comment: bool, cuts: list[int], crlf: bool
) -> None:
    stream = b"".join(encode_event(p) for p in payloads)
    if with_comment:
        stream = b": keep-alive\n\n" + stream
    stream += DONE + encode_event({"after": "done"})
    if crlf:  # servers may end SSE lines with CRLF
        stream = stream.replace(b"\n", b"\r\n")
    decoded = asyncio.run(_decode(stream, cuts))
    assert decoded == payloads  # nothing after [DONE] is read


@FAST
@given(json_objects)
def test_encoded_event_is_one_data_line(payload: dict[str, Any]) -> None:
    event = encode_event(payload)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2
