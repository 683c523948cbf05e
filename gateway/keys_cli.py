"""``slm-gateway keys create|list|revoke``: manage virtual keys in the gateway's own store.

Acts on the store the gateway uses (Redis when ``--redis-url`` / ``REDIS_URL`` is set, else
``<data dir>/keys.sqlite3``), so it works with the gateway running or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.auth.keys import KeySpec, VirtualKey, parse_expiry
from gateway.auth.store import KeyStore, build_key_store
from gateway.core.errors import GatewayError
from gateway.settings import GatewaySettings


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    store_args = argparse.ArgumentParser(add_help=False)
    store_args.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or None)
    store_args.add_argument("--data-dir", type=Path, default=None, help="embedded store's dir (no Redis)")
    keys = subparsers.add_parser("keys", help="virtual API keys: create, list, revoke")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    create = sub.add_parser("create", parents=[store_args], help="create a key; its secret is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--budget-usd", type=float, default=None)
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--models", default=None, help="comma-separated allow-list (default: all)")
    create.add_argument("--tags", default=None, help="comma-separated tags (routing rules can match them)")
    create.add_argument("--expires", default=None, help="2026-12-31, an ISO time, or a span: 12h, 30d, 2w")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=lambda args: _run(args, _create))

    listing = sub.add_parser("list", parents=[store_args], help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=lambda args: _run(args, _list))

    revoke = sub.add_parser("revoke", parents=[store_args],
                            help="revoke a key: it stops working at once on every replica")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=lambda args: _run(args, _revoke))


def _run(args: argparse.Namespace, action: Callable[[KeyStore, argparse.Namespace], Awaitable[int]]) -> int:
    async def go() -> int:
        store = build_key_store(args.redis_url, args.data_dir or GatewaySettings.from_env().data_dir)
        try:
            return await action(store, args)
        except GatewayError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        finally:
            await store.close()

    return asyncio.run(go())


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    for name in ("budget_usd", "rpm", "tpm"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "budget_usd" else 1):
            print(f"error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        expires_at = parse_expiry(args.expires)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = KeySpec(name=args.name, budget_usd=args.budget_usd, rpm=args.rpm, tpm=args.tpm,
                   models=_csv(args.models), tags=_csv(args.tags), expires_at=expires_at)
    key, secret = await store.create(spec)
    if args.json:
        print(json.dumps(key.public_view() | {"key": secret}))
        return 0
    print(f"created {key.id} ({key.name})")
    print(f"secret: {secret}")
    print("This secret is shown once and stored only as a hash: copy it now.", file=sys.stderr)
    return 0


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def _row(key: VirtualKey) -> list[str]:
    view: dict[str, Any] = key.public_view()
    budget = "-" if view["budget_usd"] is None else f"{view['budget_usd']:.4f}"
    status = "revoked" if key.revoked else ("expired" if key.expired() else "active")
    return [key.id, key.name, status, f"{view['spent_usd']:.6f}", budget, str(key.rpm or "-"), str(key.tpm or "-"),
            ",".join(key.models) or "*", ",".join(key.tags) or "-", _when(key.expires_at)]


async def _list(store: KeyStore, args: argparse.Namespace) -> int:
    keys = await store.list_keys()
    if args.json:
        print(json.dumps([key.public_view() for key in keys]))
        return 0
    header = ["id", "name", "status", "spent_usd", "budget_usd", "rpm", "tpm", "models", "tags", "expires"]
    rows = [header] + [_row(key) for key in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


async def _revoke(store: KeyStore, args: argparse.Namespace) -> int:
    if not await store.revoke(args.key_id):
        print(f"error: no key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0
