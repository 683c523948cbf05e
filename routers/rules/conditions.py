"""Rule conditions, compiled once per policy load and evaluated per request.

Conditions are checked cheapest first (flags, headers, tags, text patterns) so the one
that may need a tokenizer, ``prompt_tokens``, runs only when everything else already holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.core.strategy import ChatRequestView
from routers.rules.config import Rule, RuleConditions, TokenRange, ValueMatch

CHARS_PER_TOKEN = 4  # estimate when no local tokenizer: ~4 characters per English BPE token


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_text(request: ChatRequestView) -> str:
    """What ``prompt_tokens`` counts: the messages' contents (no chat-template tokens)."""
    return "\n".join(m.content for m in request.messages)


@dataclass(frozen=True, slots=True)
class CompiledValueMatch:
    equals: str | None
    pattern: re.Pattern[str] | None

    @classmethod
    def build(cls, match: str | ValueMatch) -> CompiledValueMatch:
        if isinstance(match, str):
            return cls(match, None)
        return cls(match.equals, re.compile(match.regex) if match.regex is not None else None)

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value == self.equals


class RequestFacts:
    """Per-request values shared by all rules: computed at most once each."""

    def __init__(
        self, request: ChatRequestView, sensitive: Callable[[], bool],
        count_tokens: Callable[[str, str], Awaitable[int]],
    ) -> None:
        self.request = request
        self._sensitive = sensitive
        self._sensitive_value: bool | None = None
        self._count_tokens = count_tokens
        self._token_counts: dict[str, int] = {}
        self._headers: dict[str, str] | None = None
        self._prompt_text: str | None = None

    @property
    def sensitive(self) -> bool:
        if self._sensitive_value is None:
            self._sensitive_value = self._sensitive()
        return self._sensitive_value

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = {k.lower(): v for k, v in self.request.headers.items()}
        return self._headers

    async def prompt_tokens(self, target: str) -> int:
        """Prompt token count under ``target``'s tokenizer (or the estimate)."""
        if target not in self._token_counts:
            if self._prompt_text is None:
                self._prompt_text = prompt_text(self.request)
            self._token_counts[target] = await self._count_tokens(target, self._prompt_text)
        return self._token_counts[target]


class CompiledRule:
    """One rule with its patterns compiled."""

    def __init__(self, rule: Rule) -> None:
        when: RuleConditions = rule.when
        self.name = rule.name
        self.target = rule.target
        self.when = when
        self.text_pattern = re.compile(when.regex) if when.regex is not None else None
        self.keyword_pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, when.keywords)) + r")(?!\w)", re.IGNORECASE)
            if when.keywords else None
        )
        self.user = CompiledValueMatch.build(when.user) if when.user is not None else None
        self.header = CompiledValueMatch.build(when.header) if when.header is not None else None
        self.key_tags = frozenset(when.key_tags or ())

    def _text(self, request: ChatRequestView) -> str:
        return request.last_user_text() if self.when.on == "last_user" else request.system_text()

    def _cheap_conditions_hold(self, facts: RequestFacts) -> bool:
        when, request = self.when, facts.request
        if when.has_tools is not None and request.has_tools != when.has_tools:
            return False
        if when.has_response_format is not None and request.has_response_format != when.has_response_format:
            return False
        if self.key_tags and self.key_tags.isdisjoint(request.key_tags):
            return False
        if self.user is not None and not self.user.matches(request.user):
            return False
        if (self.header is not None and when.header is not None
                and not self.header.matches(facts.headers.get(when.header.name))):
            return False
        if self.text_pattern is not None or self.keyword_pattern is not None:
            text = self._text(request)
            if self.text_pattern is not None and self.text_pattern.search(text) is None:
                return False
            if self.keyword_pattern is not None and self.keyword_pattern.search(text) is None:
                return False
        return when.sensitive is None or facts.sensitive == when.sensitive

    async def matches(self, facts: RequestFacts) -> bool:
        if not self._cheap_conditions_hold(facts):
            return False
        bounds: TokenRange | None = self.when.prompt_tokens
        if bounds is None:
            return True
        count = await facts.prompt_tokens(self.target)
        return (bounds.min is None or count >= bounds.min) and (bounds.max is None or count <= bounds.max)
