"""Prompt lookup (n-gram) drafting: propose what followed the sequence's tail last time.

Answers repeat their prompt (code reuses the names, signatures and docstrings it was given;
edits and summaries quote their input), so the tokens that followed an earlier occurrence of
the last ``n`` tokens are a free, often long, draft. Longer matches are tried first (they
predict better); among equal matches the most recent occurrence wins (it reflects what the
answer is doing now).
"""

from __future__ import annotations

from collections.abc import Sequence


def prompt_lookup(sequence: Sequence[int], min_n: int, max_n: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the longest matching tail."""
    size = len(sequence)
    if k <= 0:
        return []
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        tail = list(sequence[size - n :])
        first = tail[0]
        # The occurrence must end before the tail starts, so something follows it.
        for start in range(size - n - 1, -1, -1):
            if sequence[start] == first and list(sequence[start : start + n]) == tail:
                return list(sequence[start + n : start + n + k])
    return []
