"""A uvicorn server that drains before it stops (one worker).

Plain uvicorn, on SIGTERM, closes its listening socket first and then waits for open
connections: a load balancer probing ``/ready`` during that time gets *connection refused*
instead of a clean "not ready", and traffic still in its pipeline is dropped. This server
turns the signal into a drain:

1. ``state.draining = True`` at once: ``/ready`` answers 503 ``{"draining": true}`` while the
   listener stays open and in-flight requests, streams included, keep going;
2. when no request is in flight, or ``SLM_GATEWAY_DRAIN_SECONDS`` has passed, uvicorn's own
   shutdown runs (close the listener, finish connections, lifespan shutdown — which flushes
   the accounting queue with ``AccountingService.close``).

A second SIGTERM / SIGINT skips the wait; a further SIGINT forces uvicorn's exit. With
``--workers > 1`` uvicorn's supervisor runs plain servers: each worker stops accepting at
once and finishes its in-flight requests within ``timeout_graceful_shutdown``, then drains
and flushes in the lifespan — no 503 phase (docs/reliability.md).
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from gateway.http_protocol import limited_config
from gateway.reliability.settings import HttpLimits

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self.fastapi_app = app
        self.drain_seconds = drain_seconds
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only set plain attributes here; on_tick does the rest.
        state = getattr(self.fastapi_app.state, "gateway", None)
        if self._drain_deadline is not None or state is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it after a clean exit
        state.draining = True
        self._drain_deadline = time.monotonic() + self.drain_seconds

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._drain_deadline is None:
            return False
        state = self.fastapi_app.state.gateway
        if counter % 10 == 0:
            logger.info("draining: %d request(s) in flight", state.in_flight)
        if state.in_flight <= 0:
            logger.info("drained; shutting down")
            return True
        if time.monotonic() >= self._drain_deadline:
            logger.warning("drain grace of %.0fs over with %d request(s) in flight; shutting down",
                           self.drain_seconds, state.in_flight)
            return True
        return False


def serve_draining(
    app: FastAPI, *, host: str, port: int, log_level: str, access_log: bool, drain_seconds: float,
    limits: HttpLimits | None = None,
) -> None:
    """Serve ``app`` in this process with the draining shutdown described above."""
    config = limited_config(
        app, limits or HttpLimits(), host=host, port=port, log_level=log_level, access_log=access_log,
        timeout_graceful_shutdown=max(1, int(drain_seconds)),
    )
    DrainingServer(config, app, drain_seconds).run()


def serve_workers(
    app_path: str, *, workers: int, host: str, port: int, log_level: str, access_log: bool, drain_seconds: float,
    limits: HttpLimits | None = None,
) -> None:
    """``uvicorn --workers N`` (a supervisor and N worker processes), with the same HTTP limits."""
    from uvicorn.supervisors import Multiprocess

    config = limited_config(
        app_path, limits or HttpLimits(), factory=True, workers=workers, host=host, port=port, log_level=log_level,
        access_log=access_log, timeout_graceful_shutdown=max(1, int(drain_seconds)),
    )
    Multiprocess(config, sockets=[config.bind_socket()]).run()
