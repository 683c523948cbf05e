"""Apply a :class:`~routers.privacy.config.PrivacyPolicy` to a chat request.

The guard looks at everything a cloud upstream would receive: every message's content
and every string in the pass-through fields (``SamplingParams.extra``). It reports *which*
detectors fired and the strongest action they call for; it never keeps the matched text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.core.strategy import ChatRequestView
from routers.privacy.config import PrivacyAction, PrivacyPolicy
from routers.privacy.detectors import DETECTOR_NAMES, DETECTORS, scan
from routers.privacy.redaction import Redactor

# Stronger actions win when several detectors with different actions fire.
_STRENGTH: dict[PrivacyAction, int] = {"redact": 1, "local_only": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class PrivacyFinding:
    detectors: tuple[str, ...] = ()
    action: PrivacyAction | None = None  # None: nothing fired, or no privacy policy

    @property
    def sensitive(self) -> bool:
        return bool(self.detectors)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def request_texts(request: ChatRequestView) -> list[str]:
    """Every piece of request text that would leave the machine with a cloud call."""
    return [m.content for m in request.messages] + list(_strings(request.params.extra))


def inspect_request(request: ChatRequestView, policy: PrivacyPolicy | None) -> PrivacyFinding:
    kinds = policy.detectors if policy is not None else DETECTOR_NAMES
    # One pass per detector over the joined text: cheaper than one per message, and a
    # detector only has to say *whether* it fires here.
    text = "\n".join(request_texts(request))
    fired = tuple(kind for kind in kinds if DETECTORS[kind](text))
    if not fired or policy is None:
        return PrivacyFinding(fired, None)
    actions: list[PrivacyAction] = [policy.per_detector.get(kind, policy.action) for kind in fired]  # type: ignore[call-overload]
    strongest: PrivacyAction = max(actions, key=_STRENGTH.__getitem__)
    return PrivacyFinding(fired, strongest)


def _redact_value(value: Any, redactor: Redactor, kinds: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redactor.redact(value, scan(value, kinds))
    if isinstance(value, dict):
        return {key: _redact_value(item, redactor, kinds) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(item, redactor, kinds) for item in value)
    return value


def redact_request(request: ChatRequestView, kinds: tuple[str, ...]) -> tuple[ChatRequestView, Redactor]:
    """A copy of ``request`` with every detected span replaced by a placeholder."""
    redactor = Redactor(existing_text="\n".join(request_texts(request)))
    messages = [
        m.model_copy(update={"content": redactor.redact(m.content, scan(m.content, kinds))})
        for m in request.messages
    ]
    params = dataclasses.replace(request.params, extra=_redact_value(request.params.extra, redactor, kinds))
    redacted = dataclasses.replace(request, messages=messages, params=params)
    return redacted, redactor
