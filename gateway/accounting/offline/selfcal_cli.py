"""``slm-gateway selfcal status|apply``: the self-calibrating cascades' shared state, and writing it
into a policy file — only ever on request (the running gateway applies the store's threshold in
every replica without it; ``apply`` makes a policy file carry it for the next deployment).

Both read the same store the gateway writes: Redis when ``--redis-url`` / ``REDIS_URL`` is set,
else ``<data dir>/selfcal.sqlite3``. ``report`` shows the per-cascade summary through
:func:`cascade_summaries` / :func:`print_cascades`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gateway.accounting.offline.policy_edit import NeedsRewrite, rewrite_policy, set_tier_calibration
from gateway.accounting.selfcal_report import summaries_body, summarize, window_phrase
from gateway.accounting.selfcal_store import SharedSelfCalStore, StoreError, build_selfcal_store, utc_day
from gateway.accounting.service import AccountingService, build_accounting
from gateway.accounting.window import minute_window
from gateway.auth.keys import nano_to_usd
from gateway.core.selfcal import CalibrationState
from gateway.settings import GatewaySettings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("selfcal", help="self-calibrating cascades: shared state; write it to a policy")
    sub = parser.add_subparsers(dest="selfcal_command", required=True)
    status = sub.add_parser("status", help="each cascade tier's threshold, bound, labels, drift alarms, summary")
    status.add_argument("--since", default="7d", help="window of the summary: ISO time, epoch seconds, or 30m, 7d")
    status.add_argument("--json", action="store_true")
    _store_arguments(status)
    status.set_defaults(func=run_status)
    apply = sub.add_parser("apply", help="write the store's threshold (and refitted calibration) into a policy file")
    apply.add_argument("--policy", type=Path, required=True)
    apply.add_argument("--model", required=True, help="the cascade's public model name")
    apply.add_argument("--tier", type=int, default=0)
    apply.add_argument("--dry-run", action="store_true", help="print the edited file instead of writing it")
    apply.add_argument("--rewrite", action="store_true",
                       help="if the file's layout is beyond the comment-keeping edit, rewrite it (comments lost)")
    _store_arguments(apply)
    apply.set_defaults(func=run_apply)


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or None)
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded store's dir")


def open_store(redis_url: str | None, data_dir: Path) -> SharedSelfCalStore | None:
    """The store, or None when the embedded file does not exist (nothing self-calibrated here yet)."""
    if not redis_url and not (data_dir / "selfcal.sqlite3").exists():
        return None
    return build_selfcal_store(redis_url, data_dir)


async def cascade_summaries(redis_url: str | None, data_dir: Path, service: AccountingService,
                            since: str | None, until: str | None) -> list[dict[str, Any]]:
    store = open_store(redis_url, data_dir)
    if store is None:
        return []
    try:
        first, last = minute_window(since, until)
        totals = await service.totals(since, until, "model")
        cascades: list[dict[str, Any]] = summaries_body(
            await summarize(store, totals, first, last, window_phrase(since)), first, last)["cascades"]
        return cascades
    except StoreError as exc:
        print(f"self-calibration store unavailable: {exc}", file=sys.stderr)
        return []
    finally:
        await store.close()


def print_cascades(cascades: list[dict[str, Any]]) -> None:
    if not cascades:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="self-calibrating cascades")
    for column in ("model", "tier", "requests", "kept", "agreement (kept)", "labels", "threshold", "bound",
                   "reason", "shadow jobs", "shadow $", "savings $"):
        table.add_column(column, justify="left" if column in ("model", "reason") else "right")
    for item in cascades:
        agreement, calibration = item["agreement"], item["calibration"] or {}
        estimate = agreement["estimate"]
        shown = "-" if estimate is None else f"{estimate:.1%} [{agreement['low']:.1%}, {agreement['high']:.1%}]"
        table.add_row(
            item["model"], str(item["tier"]), str(item["requests"]),
            f"{item['kept_share']:.1%}" if item["requests"] else "-", shown,
            f"{agreement['labels']}/{item['labels_total']}", _fmt(calibration.get("threshold")),
            _fmt(calibration.get("disagreement_bound")), str(calibration.get("reason", "-")),
            str(item["shadow_jobs"]), f"{item['shadow_cost_usd']:.6f}", f"{item['savings_usd']:.6f}",
        )
    console = Console()
    console.print(table)
    for item in cascades:
        console.print(f"{item['model']}: {item['sentence']}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else GatewaySettings.from_env().data_dir


def run_status(args: argparse.Namespace) -> int:
    return asyncio.run(_status(args))


async def _status(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    service = build_accounting(args.redis_url, data_dir)
    try:
        cascades = await cascade_summaries(args.redis_url, data_dir, service, args.since, None)
    finally:
        await service.store.close()
    store = open_store(args.redis_url, data_dir)
    spend: dict[str, float] = {}
    if store is not None:
        try:
            for model in sorted({item["model"] for item in cascades}):
                spend[model] = nano_to_usd((await store.shadow_day(model, utc_day())).spent_nano)
        finally:
            await store.close()
    for item in cascades:
        item["shadow_spend_today_usd"] = spend.get(item["model"], 0.0)
    if args.json:
        print(json.dumps({"cascades": cascades}, indent=2))
    elif not cascades:
        print("no self-calibrating cascade has labels or a state in this store")
    else:
        print_cascades(cascades)
    return 0


def run_apply(args: argparse.Namespace) -> int:
    return asyncio.run(_apply(args))


async def _apply(args: argparse.Namespace) -> int:
    store = open_store(args.redis_url, _data_dir(args))
    if store is None:
        print("no self-calibration store here (nothing to apply)", file=sys.stderr)
        return 1
    try:
        state = await store.get_state(args.model, args.tier)
    except StoreError as exc:
        print(f"self-calibration store unavailable: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    if state is None:
        print(f"no calibration state for {args.model} tier {args.tier} in the store", file=sys.stderr)
        return 1
    text = args.policy.read_text()
    threshold, calibration = policy_values(text, args.model, args.tier, state)
    try:
        edited = set_tier_calibration(text, args.model, args.tier, threshold, calibration)
    except NeedsRewrite as exc:
        if not args.rewrite:
            print(f"{args.policy}: {exc}; rerun with --rewrite to rewrite the file (its comments are lost)",
                  file=sys.stderr)
            return 1
        edited = rewrite_policy(text, args.model, args.tier, threshold, calibration)
    if args.dry_run:
        print(edited, end="")
        return 0
    args.policy.write_text(edited)
    print(f"{args.policy}: models.{args.model}.tiers[{args.tier}] threshold {threshold!r}"
          f"{' with the refitted calibration' if calibration else ''} (store version {state.version}, "
          f"{state.reason}: disagreement bound {state.disagreement_bound:.4f} at {state.confidence:.0%} "
          f"on {state.labels_used} labels, keeps {state.kept_share:.1%})")
    return 0


def policy_values(text: str, model: str, tier: int,
                  state: CalibrationState) -> tuple[float, tuple[list[float], list[float]] | None]:
    """What the policy must say to apply ``state``. The store's threshold is on the raw score scale;
    a tier with a calibration map compares the *calibrated* score to its threshold. So: the state's
    refitted map when it has one (else the policy's own), and the threshold carried through that
    map — monotone, so every request the raw threshold keeps is kept (and, where the map is flat just
    below the raw threshold, the few scored in that flat stretch too)."""
    import yaml

    calibration: tuple[list[float], list[float]] | None = None
    if state.calibration_x and state.calibration_y:
        calibration = (list(state.calibration_x), list(state.calibration_y))
    tier_data = yaml.safe_load(text)["models"][model]["tiers"][tier]
    mapping = calibration or _policy_map(tier_data.get("calibration"))
    if mapping is None:
        return state.threshold, None
    return float(np.interp(state.threshold, mapping[0], mapping[1])), calibration


def _policy_map(data: Any) -> tuple[list[float], list[float]] | None:
    if not isinstance(data, dict) or not data.get("x") or not data.get("y"):
        return None
    return [float(v) for v in data["x"]], [float(v) for v in data["y"]]
