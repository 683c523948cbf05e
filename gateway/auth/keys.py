"""The virtual key model, its secret format and the peppered hash it is stored as.

A secret (``sk-slmgw-<43 url-safe chars>``, 256 random bits) is shown once, at creation. The
store keeps only ``HMAC-SHA256(pepper, secret)``; the pepper is random, generated once per
store and kept in the store itself, so a leaked key table alone cannot be brute-forced
offline against a dictionary of guesses shared across deployments. Lookups go by that
hash (the secret's bytes never reach a comparison whose timing depends on them), and the
final equality check uses :func:`hmac.compare_digest`.

Money is held in integer nano-dollars (1e-9 USD) so that concurrent increments in Redis
(Lua numbers are doubles) and SQLite add up exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

SECRET_PREFIX = "sk-slmgw-"
NANO_PER_USD = 1_000_000_000
_SPAN = re.compile(r"^(\d+)([hdw])$")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_pepper() -> str:
    return secrets.token_hex(32)


def hash_secret(pepper: str, secret: str) -> str:
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def looks_like_virtual_key(secret: str) -> bool:
    return secret.startswith(SECRET_PREFIX)


def usd_to_nano(usd: float) -> int:
    return round(usd * NANO_PER_USD)


def nano_to_usd(nano: int) -> float:
    return nano / NANO_PER_USD


def parse_expiry(text: str | None, now: float | None = None) -> float | None:
    """``2026-12-31`` (end of that UTC day), an ISO time, or a span ``12h`` / ``30d`` / ``2w``."""
    if not text:
        return None
    now = time.time() if now is None else now
    span = _SPAN.match(text.strip())
    if span:
        amount, unit = int(span.group(1)), span.group(2)
        hours = {"h": 1, "d": 24, "w": 24 * 7}[unit] * amount
        return now + hours * 3600
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expiry {text!r} is neither a date (2026-12-31), an ISO time, nor a span (30d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if len(text.strip()) == 10:  # a bare date: the key works through that whole day
        moment += timedelta(days=1)
    return moment.timestamp()


@dataclass(slots=True)
class VirtualKey:
    """A key as stored (never with its secret)."""

    id: str
    name: str
    hash: str
    budget_nano: int | None = None  # None: no budget (spend is still counted)
    spent_nano: int = 0
    reserved_nano: int = 0
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] = ()  # empty: every model
    tags: tuple[str, ...] = ()
    expires_at: float | None = None
    revoked: bool = False
    created_at: float = field(default_factory=time.time)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def public_view(self) -> dict[str, Any]:
        """What list / create endpoints show: everything but the hash."""
        data = asdict(self)
        data.pop("hash")
        for name in ("budget", "spent", "reserved"):
            nano = data.pop(f"{name}_nano")
            data[f"{name}_usd"] = None if nano is None else nano_to_usd(nano)
        data["models"], data["tags"] = list(self.models), list(self.tags)
        data["object"] = "gateway.key"
        return data


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a caller asks for when creating a key."""

    name: str
    budget_usd: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    expires_at: float | None = None

    def build(self, key_id: str, key_hash: str) -> VirtualKey:
        return VirtualKey(
            id=key_id, name=self.name, hash=key_hash,
            budget_nano=None if self.budget_usd is None else usd_to_nano(self.budget_usd),
            rpm=self.rpm, tpm=self.tpm, models=self.models, tags=self.tags, expires_at=self.expires_at,
        )
