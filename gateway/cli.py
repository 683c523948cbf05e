"""``slm-gateway`` command line: serve, policy check, and the subcommands other modules add.

Each feature module that has commands exposes ``register(subparsers)``; they are listed in
:data:`COMMAND_MODULES` and imported only when the CLI runs. Those are offline tools
(``*/offline/``: calibration, evaluation, training, reports) and admin tools: they may import
the runtime, and nothing on the request path imports them (``tests/test_layers.py``).
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "gateway.accounting.offline.report_cli",
    "gateway.accounting.offline.selfcal_cli",
    "routers.cascade.offline.cli",
    "routers.learned.offline.cli",
    "gateway.keys_cli",
)

logger = logging.getLogger("slm_gateway")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    if args.policy:
        os.environ["SLM_GATEWAY_POLICY"] = str(args.policy)
    from policies.loader import PolicyError, load_policy

    try:
        load_policy(os.environ.get("SLM_GATEWAY_POLICY") or None)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not _is_loopback(args.host) and not os.environ.get("SLM_GATEWAY_ADMIN_KEY"):
        logger.warning(
            "!!! binding %s with NO authentication: anyone who can reach this port can spend your upstream "
            "budget. Set SLM_GATEWAY_ADMIN_KEY to require API keys. !!!", args.host,
        )
    os.environ["SLM_GATEWAY_DRAIN_SECONDS"] = str(args.drain_seconds)
    from gateway.reliability.settings import ReliabilitySettings
    from gateway.serve import serve_draining, serve_workers

    # Header limits apply in the HTTP protocol, before the app (and in every worker).
    limits = ReliabilitySettings.from_env().http
    if args.workers == 1:
        # One process: drain on SIGTERM (readiness off, in-flight finish) before stopping.
        from gateway.asgi import create_app

        serve_draining(create_app(), host=args.host, port=args.port, log_level=args.log_level,
                       access_log=args.access_log, drain_seconds=args.drain_seconds, limits=limits)
        return 0
    serve_workers("gateway.asgi:create_app", workers=args.workers, host=args.host, port=args.port,
                  log_level=args.log_level, access_log=args.access_log, drain_seconds=args.drain_seconds,
                  limits=limits)
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.runtime import registry_problems
    from policies.loader import check_policy

    problems = check_policy(args.file) + registry_problems()
    if problems:
        for problem in problems:
            print(f"{args.file}: {problem}")
        return 1
    print(f"{args.file}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-gateway", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--policy", help="policy YAML (default: $SLM_GATEWAY_POLICY or the shipped default)")
    serve.add_argument("--host", default=os.environ.get("SLM_GATEWAY_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("SLM_GATEWAY_PORT", "8000")))
    serve.add_argument("--workers", type=int, default=1, help="worker processes (each loads local models)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--access-log", action="store_true")
    serve.add_argument("--drain-seconds", type=float, default=float(os.environ.get("SLM_GATEWAY_DRAIN_SECONDS", "20")))
    serve.set_defaults(func=cmd_serve)

    policy = sub.add_parser("policy", help="policy tools")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate a policy file; print every problem; exit 1 if any")
    check.add_argument("file")
    check.set_defaults(func=cmd_policy_check)

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # feature not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
