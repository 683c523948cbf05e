"""The app factory: ``build_app(settings)`` wires policy, backends, accounting and routes.

Nothing is created at import time; everything a process holds lives on ``app.state.gateway``
(:class:`gateway.state.GatewayState`), built in the lifespan.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from gateway.auth.api import build_keys_router
from gateway.auth.lifecycle import start_keys, stop_keys
from gateway.auth.secrets import SecretScrubber, install_log_scrubbing
from gateway.error_handlers import install_error_handlers
from gateway.middleware import install_middleware
from gateway.routes import build_router
from gateway.runtime import PolicyRuntime
from gateway.settings import GatewaySettings
from gateway.state import AccountingSink, GatewayState, MetricsSink
from gateway.telemetry.settings import TracingSettings

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from gateway.serving.selfcal_service import SelfCalService
    from gateway.telemetry.export import Tracer
from policies.loader import load_policy

logger = logging.getLogger(__name__)


def _default_accounting(settings: GatewaySettings, stream_maxlen: int) -> AccountingSink:
    from gateway.accounting.service import build_accounting

    reliability = settings.reliability
    return build_accounting(settings.redis_url, settings.data_dir, stream_maxlen, redis_pool=reliability.redis_pool,
                            journal=reliability.journal)


def _default_selfcal(settings: GatewaySettings, sink: AccountingSink, metrics: MetricsSink) -> SelfCalService | None:
    from gateway.serving.selfcal_service import SelfCalService

    return SelfCalService.from_settings(settings, sink, metrics)


def _default_metrics() -> MetricsSink:
    from gateway.accounting.metrics import GatewayMetrics

    return GatewayMetrics()


def build_app(
    settings: GatewaySettings | None = None, *, accounting: AccountingSink | None = None,
    metrics: MetricsSink | None = None, handle_signals: bool = False,
) -> FastAPI:
    settings = settings or GatewaySettings.from_env()
    policy = load_policy(settings.policy_path)  # fail fast, before the server binds
    tracing = TracingSettings.from_env()  # off (OTEL_EXPORTER_OTLP_ENDPOINT unset): no SDK import, no middleware
    tracer: Tracer | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before anything can log: no secret this process holds (admin key, upstream API keys,
        # bearer tokens) reaches a log line.
        unscrub = install_log_scrubbing(SecretScrubber.for_policy(policy, settings.admin_key))
        # The sink and metrics exist before the policy's strategies: their shadow jobs write through them.
        sink = accounting or _default_accounting(settings, policy.gateway.record_stream_maxlen)
        metrics_sink = metrics or _default_metrics()
        if tracer is not None:
            from gateway.telemetry.export import TracingMetrics

            metrics_sink = TracingMetrics(metrics_sink, tracer)  # every finished record reaches the tracer
        selfcal = _default_selfcal(settings, sink, metrics_sink)
        runtime = await PolicyRuntime.start(policy, threads=settings.threads, wiring=selfcal)
        await sink.start()
        state = GatewayState(settings=settings, runtime=runtime, accounting=sink, metrics=metrics_sink,
                             selfcal=selfcal)
        start_keys(state)
        app.state.gateway = state
        _install_accounting_routes(app, sink)
        if handle_signals:
            _install_sighup(state)
        # Everything built so far (torch, transformers, the policy, model weights' wrappers) lives
        # as long as the process: move it out of the collector's generations so a full
        # collection under load walks only what requests allocate (it took ~100 ms before).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            drain_started = asyncio.get_running_loop().time()
            await drain(state)
            if state.selfcal is not None:  # shadow jobs get what is left of the drain window (at least 1 s)
                left = state.settings.drain_seconds - (asyncio.get_running_loop().time() - drain_started)
                await state.selfcal.close(grace_s=max(1.0, left))
            await state.runtime.close()
            await stop_keys(state)  # settles reservations still in flight before accounting closes
            if state.response_store is not None:
                await state.response_store.close()
            await sink.close()
            if tracer is not None:
                tracer.shutdown()  # flush the spans still batched
            unscrub()

    app = FastAPI(title="slm-gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible gateway: small model where it is good enough, large where not.")
    install_error_handlers(app)
    app.include_router(build_router())
    app.include_router(build_keys_router())
    install_middleware(app, policy.gateway.max_body_bytes)
    if tracing.enabled:
        from gateway.telemetry.export import install_tracing

        tracer = install_tracing(app, tracing)  # added last: outermost, so the span covers everything
    return app


def _install_accounting_routes(app: FastAPI, sink: AccountingSink) -> None:
    try:
        from gateway.accounting.api import build_accounting_router
    except ImportError:
        return
    if getattr(app.state, "accounting_routes", False):
        return
    from gateway.dashboard.routes import build_dashboard_router

    app.include_router(build_accounting_router(sink))  # type: ignore[arg-type]
    app.include_router(build_dashboard_router(sink))  # type: ignore[arg-type]  # reads the same store
    app.state.accounting_routes = True


def _install_sighup(state: GatewayState) -> None:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(state.reload_policy()))
    except (NotImplementedError, RuntimeError):  # not the main thread / not POSIX
        logger.warning("SIGHUP policy reload unavailable in this process")


async def drain(state: GatewayState) -> None:
    """Readiness turns false, then in-flight requests get up to the grace period to finish."""
    state.draining = True
    deadline = asyncio.get_running_loop().time() + state.settings.drain_seconds
    while state.in_flight > 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
