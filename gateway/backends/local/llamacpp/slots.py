"""Sequence slots of one llama.cpp context, and the prefix cache they form.

Each slot is one llama.cpp sequence id. ``tokens`` mirrors exactly what the KV cache holds
for it (position i = tokens[i]). A finished request leaves its slot *idle but filled*: the
next request whose prompt starts the same way (a shared system prompt, a cascade's
hand-off, a speculative verifier's growing context) takes the slot over, drops the
diverging tail and feeds only the rest. Idle slots are evicted least-recently-used when a
new request needs room.

A request for prompt logprobs (an echo, a remote speculative verifier's call) needs a score
for every prompt token; a slot also keeps the prompt scores its last such request computed
(``scores[j]``: token j's logprob, rank and top-K after ``tokens[:j]``), so the next one reuses
them for the shared prefix and computes only the rest.

Memory is accounted conservatively: every running request reserves prompt + max new
tokens, every idle slot its cached tokens; cells shared between sequences count twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.backends.local.sampling import PromptScore


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(slots=True)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    reserved: int = 0  # cells a running request may reach (prompt + max new tokens)
    last_used: int = 0
    scores: list[PromptScore] = field(default_factory=list)  # prompt scores of tokens[:len(scores)]
    scores_top: int = -1  # the top-K those scores were computed with

    def truncate(self, keep: int) -> None:
        """The KV now holds only the first ``keep`` tokens (a score needs its token and all before)."""
        del self.tokens[keep:]
        del self.scores[keep:]

    def cached_scores(self, keep: int, top: int) -> list[PromptScore]:
        """Scores of tokens 1..keep, their top lists cut to ``top`` (``keep`` within :meth:`scored_prefix`)."""
        return [None if s is None else (s[0], s[1], s[2][:top]) for s in self.scores[1 : keep + 1]]

    def scored_prefix(self, prompt: Sequence[int], top: int) -> int:
        """How many leading tokens a prompt-logprobs request can keep here: tokens 1..keep must
        have cached scores (computed with at least ``top`` alternatives) and token ``keep`` must
        be the prompt's too (its score is the row after tokens[:keep], kept in the KV)."""
        if self.busy or self.scores_top < top or not self.scores:
            return 0
        return max(min(common_prefix(self.tokens, prompt) - 1, len(self.scores) - 1), 0)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a new request runs: its slot, how many leading tokens it keeps there, and the
    busy slot to share a prefix from (``share_from``/``share_len``) when that one matches best."""

    slot: Slot
    keep: int
    share_from: Slot | None = None
    share_len: int = 0


class SlotTable:
    # Sharing from a busy sequence costs a cache copy bookkeeping pass: only worth it for a
    # real prefix (a system prompt), not for a couple of template tokens.
    MIN_SHARE = 16

    def __init__(self, count: int, capacity: int) -> None:
        self.slots = [Slot(i) for i in range(count)]
        self.capacity = capacity
        self._clock = 0

    def used(self) -> int:
        return sum(s.reserved if s.busy else len(s.tokens) for s in self.slots)

    def place(self, prompt: Sequence[int], limit: int, reserve: int, scored_top: int | None = None
              ) -> Placement | None:
        """A slot for a request (None: no slot or no room now). ``limit`` caps the reused prefix
        (at least one token must be fed to get logits); ``reserve`` is the cells it may reach;
        ``scored_top``: the request wants prompt logprobs with that many alternatives (only a
        prefix with cached scores is reused, never shared from a running sequence)."""
        idle = [s for s in self.slots if not s.busy]
        if not idle:
            return None

        def usable(slot: Slot) -> int:
            if scored_top is not None:
                return min(slot.scored_prefix(prompt, scored_top), limit)
            return min(common_prefix(slot.tokens, prompt), limit)

        best = max(idle, key=lambda s: (usable(s), -s.last_used))
        keep = usable(best)
        share_from, share_len = None, 0
        for slot in self.slots:
            if slot.busy and scored_top is None:
                length = usable(slot)
                if length > max(keep, share_len) and length >= self.MIN_SHARE:
                    share_from, share_len = slot, length
        if keep == 0 or share_from is not None:
            best = min(idle, key=lambda s: (len(s.tokens) > 0, s.last_used))  # an empty or the LRU slot
            keep = usable(best)
            if share_from is not None and share_len <= keep:
                share_from, share_len = None, 0
        # Room: what the others hold plus this request's reservation, evicting idle slots.
        if self._room_after_evicting(best, reserve) is None:
            return None
        return Placement(best, keep, share_from, share_len)

    def _room_after_evicting(self, chosen: Slot, reserve: int) -> list[Slot] | None:
        others = sum(s.reserved if s.busy else len(s.tokens) for s in self.slots if s is not chosen)
        evictable = sorted((s for s in self.slots if not s.busy and s is not chosen and s.tokens),
                           key=lambda s: s.last_used)
        evicted: list[Slot] = []
        while others + reserve > self.capacity:
            if not evictable:
                return None
            victim = evictable.pop(0)
            others -= len(victim.tokens)
            evicted.append(victim)
        return evicted

    def evictions_for(self, placement: Placement, reserve: int) -> list[Slot]:
        """Idle slots to clear (LRU first) so the placed request's reservation fits."""
        return self._room_after_evicting(placement.slot, reserve) or []

    def touch(self, slot: Slot) -> None:
        self._clock += 1
        slot.last_used = self._clock
