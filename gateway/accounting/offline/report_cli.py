"""``slm-gateway report``: usage per route/model/backend/key as a table, JSON, or plots; and per
self-calibrating cascade, the agreement of its kept answers and what it saved (``selfcal_cli.py``).

Reads the same store the gateway writes (Redis when ``--redis-url`` / ``REDIS_URL`` is set,
else the SQLite file in the data dir) without starting a writer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.accounting.facts import DIMENSIONS
from gateway.accounting.offline.selfcal_cli import cascade_summaries, print_cascades
from gateway.accounting.service import AccountingService, build_accounting
from gateway.accounting.store import GroupTotals, StoreUnavailableError
from gateway.accounting.window import minute_window
from gateway.settings import GatewaySettings

MAX_PLOT_INTERVALS = 24


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("report", help="cost, savings and latency per route (table, JSON, plots)")
    parser.add_argument("--since", default="1h", help="ISO time, epoch seconds, or a span: 30m, 1h, 7d")
    parser.add_argument("--until", default=None, help="same forms as --since; default now")
    parser.add_argument("--group-by", default="route", choices=DIMENSIONS)
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write the figure here")
    parser.add_argument("--json", action="store_true", help="print the /v1/gateway/usage object")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or None)
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded store's dir")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    return asyncio.run(_report(args))


async def _report(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or GatewaySettings.from_env().data_dir
    service = build_accounting(args.redis_url, data_dir)
    try:
        usage = await service.usage(args.since, args.until, args.group_by)
        cascades = await cascade_summaries(args.redis_url, data_dir, service, args.since, args.until)
        if args.json:
            # The usage object as the API gives it; self-calibrating cascades, when there are any, beside it.
            print(json.dumps({**usage, "cascades": cascades} if cascades else usage, indent=2))
        else:
            _print_table(usage, args.group_by, args.since, service)
            print_cascades(cascades)
        if args.plot is not None:
            await _write_plot(service, args)
            if not args.json:
                print(f"plot written to {args.plot}")
    except StoreUnavailableError as exc:
        print(f"accounting store unavailable: {exc}")
        return 2
    finally:
        await service.store.close()
    return 0


def _print_table(usage: dict[str, Any], group_by: str, since: str, service: AccountingService) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"usage by {group_by} since {since} ({type(service.store).__name__})")
    for column in (group_by, "requests", "prompt tok", "completion tok", "cost $", "savings $",
                   "p50 ms", "p95 ms", "p99 ms", "ttft p50", "ttft p95", "escalation"):
        table.add_column(column, justify="left" if column == group_by else "right")
    for group in usage["groups"]:
        latency, ttft = group["latency_ms"], group["ttft_ms"]
        table.add_row(
            group["key"], str(group["requests"]),
            str(group["prompt_tokens"]), str(group["completion_tokens"]),
            f"{group['cost_usd']:.6f}", f"{group['savings_usd']:.6f}",
            _ms(latency["p50"]), _ms(latency["p95"]), _ms(latency["p99"]), _ms(ttft["p50"]), _ms(ttft["p95"]),
            f"{group['escalation_rate']:.1%}",
        )
    Console().print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def _write_plot(service: AccountingService, args: argparse.Namespace) -> None:
    from gateway.accounting.offline.report_plot import plot_report

    first, last = minute_window(args.since, args.until, now=time.time())
    step = max(1, -(-(last - first + 1) // MAX_PLOT_INTERVALS))  # minutes per interval, rounded up
    series: list[tuple[float, dict[str, GroupTotals]]] = []
    for start in range(first, last + 1, step):
        end = min(last, start + step - 1)
        series.append((start * 60.0, await service.store.totals(start, end, args.group_by)))
    window = await service.store.totals(first, last, args.group_by)
    plot_report(series, window, args.group_by, args.plot)
