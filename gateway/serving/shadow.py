"""Shadow jobs of self-calibrating cascades: the :class:`~gateway.core.selfcal.ShadowRunner`.

A cascade that kept the small tier's answer may ask for the next tier's answer too, to learn
whether they agree (routers/cascade/selfcal/). The client has its answer already; the shadow job
runs here, as its own asyncio task, off every client's path:

* **Concurrency cap** per model, in this process: :meth:`ShadowJobs.submit` counts the model's
  running jobs synchronously and refuses the one past ``max_concurrent`` before anything starts.
* **Daily budget** per model, shared by every replica (the self-calibration store's ledger,
  Redis or the embedded file): the job *holds* its estimate in the store before its first call —
  refused when the day's spend plus every open hold would pass the budget — and, like a virtual
  key's :class:`~gateway.auth.meter.BudgetMeter`, holds each call's worst case before that call
  starts (:class:`ShadowMeter`), growing the hold or refusing the call. When the job ends its hold
  is settled to the real cost. So the replicas together never spend past the budget.
* **Its own record**: endpoint ``shadow``, ``public_model`` the cascade's model, route ``shadow``,
  no key (never billed to a client's key), every call ``used: False``; finalised and handed to the
  accounting sink like any request's (journaled, so never lost), so usage shows it as the model's
  shadow spend (``shadow_jobs``, ``shadow_cost_usd``) and not as a request.
* **Failures** are logged and recorded (the record's status), and reach no client.
* **Shutdown**: :meth:`ShadowJobs.close` stops taking jobs, waits for running ones up to the grace
  period, then cancels the rest; a cancelled job's record is still written (status ``cancelled``).

``submit`` decides the cap exactly and the budget from what this process knows (its own holds,
a refusal from the store in the last second); a race between replicas for the last of the
budget is settled by the store's atomic hold inside the task, and the losing job is skipped
(counted as ``skipped{reason="budget"}``) before it calls anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.accounting.facts import SHADOW_ENDPOINT
from gateway.accounting.finalize import finalize_record
from gateway.accounting.selfcal_metrics import SelfCalMetrics
from gateway.accounting.selfcal_store import SharedSelfCalStore, StoreError, utc_day
from gateway.auth.estimate import call_prompt_tokens, call_worst_case
from gateway.auth.keys import nano_to_usd, usd_to_nano
from gateway.core.backend import ChatMessage, CompletionPrompt
from gateway.core.config import Price
from gateway.core.errors import GatewayError, RateLimitError, error_kind
from gateway.core.protocol import new_id
from gateway.core.record import RequestRecord
from gateway.core.selfcal import ShadowJob
from gateway.core.strategy import GatewayResources, RequestContext
from gateway.state import AccountingSink, MetricsSink
from policies.schema import Policy

logger = logging.getLogger(__name__)

SHADOW_ROUTE = "shadow"
REFUSAL_MEMORY_S = 1.0  # after the store refused a hold, refuse locally this long (no store trip per request)


class ShadowMeter:
    """A shadow job's :class:`~gateway.core.strategy.CallBudget`: each call's worst case is covered
    by the job's hold in the shared ledger before the call starts (the hold grows, or the call is
    refused with 429 ``shadow_budget`` and never made)."""

    def __init__(self, store: SharedSelfCalStore, policy: Policy, model: str, day: str, hold_id: str,
                 held_nano: int, budget_nano: int) -> None:
        self._store, self._policy = store, policy
        self._model, self._day, self._hold_id = model, day, hold_id
        self._budget_nano = budget_nano
        self.held_nano = held_nano  # what the ledger holds for this job
        self.committed_nano = 0  # open calls at their worst case + ended calls at their real cost
        self._lock = asyncio.Lock()

    async def hold(self, backend: str, prompt: Sequence[ChatMessage] | CompletionPrompt,
                   max_tokens: int | None) -> int:
        need = call_worst_case(self._policy, backend, call_prompt_tokens(prompt), max_tokens)
        if need <= 0:
            return 0
        async with self._lock:
            shortfall = self.committed_nano + need - self.held_nano
            if shortfall > 0:
                try:
                    grown = await self._store.hold(self._model, self._day, self._hold_id, shortfall,
                                                   self._budget_nano)
                except StoreError as exc:
                    raise RateLimitError(f"shadow budget ledger unreachable: {exc}", code="shadow_budget") from exc
                if not grown:
                    raise RateLimitError(
                        f"the shadow budget of model {self._model!r} (${nano_to_usd(self._budget_nano):.6f}/day) "
                        f"cannot cover a call to {backend!r} (up to ${nano_to_usd(need):.6f})", code="shadow_budget")
                self.held_nano += shortfall
            self.committed_nano += need
        return need

    def release(self, held: int, cost_usd: float) -> None:
        self.committed_nano += usd_to_nano(cost_usd) - held


@dataclass(frozen=True, slots=True)
class PolicyBinding:
    """What a shadow job needs from the policy load that submitted it."""

    policy: Policy
    resources: GatewayResources
    reference_price: Price | None


class BoundShadowRunner:
    """The :class:`~gateway.core.selfcal.ShadowRunner` one policy load's strategies see."""

    def __init__(self, jobs: ShadowJobs, binding: PolicyBinding) -> None:
        self._jobs = jobs
        self._binding = binding

    def submit(self, model: str, job: ShadowJob, *, max_concurrent: int, budget_usd_per_day: float,
               estimated_cost_usd: float) -> bool:
        return self._jobs.submit(self._binding, model, job, max_concurrent=max_concurrent,
                                 budget_usd_per_day=budget_usd_per_day, estimated_cost_usd=estimated_cost_usd)


class ShadowJobs:
    """Every shadow job of this process (one per process; policy loads bind to it)."""

    def __init__(self, store: SharedSelfCalStore, accounting: AccountingSink, metrics: MetricsSink | None = None,
                 selfcal_metrics: SelfCalMetrics | None = None) -> None:
        self._store = store
        self._accounting = accounting
        self._metrics = metrics
        self._selfcal_metrics = selfcal_metrics
        self._running: dict[str, int] = {}  # model -> jobs started and not finished
        self._held: dict[str, int] = {}  # model -> nano-dollars this process's running jobs hold
        self._refused_until: dict[str, float] = {}  # model -> monotonic time the store's refusal is trusted
        self._tasks: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Future[None]] = set()
        self._closing = False
        self.peak: dict[str, int] = {}  # model -> most jobs running at once (benchmarks, tests)

    def bind(self, policy: Policy, resources: GatewayResources) -> BoundShadowRunner:
        reference = policy.backends.get(policy.gateway.reference_llm or "")
        return BoundShadowRunner(self, PolicyBinding(policy, resources, reference.price if reference else None))

    def running(self, model: str) -> int:
        return self._running.get(model, 0)

    def submit(self, binding: PolicyBinding, model: str, job: ShadowJob, *, max_concurrent: int,
               budget_usd_per_day: float, estimated_cost_usd: float) -> bool:
        """Start ``job`` as a task now and return True, or start nothing and return False (cap,
        budget, shutting down). Never blocks, never raises for a full runner."""
        reason = self._refusal(model, max_concurrent, budget_usd_per_day, estimated_cost_usd)
        if reason is not None:
            self._skipped(model, reason)
            return False
        estimate_nano = max(0, usd_to_nano(estimated_cost_usd))
        self._running[model] = self._running.get(model, 0) + 1
        self.peak[model] = max(self.peak.get(model, 0), self._running[model])
        self._held[model] = self._held.get(model, 0) + estimate_nano
        task = asyncio.get_running_loop().create_task(
            self._run(binding, model, job, usd_to_nano(budget_usd_per_day), estimate_nano),
            name=f"shadow-{model}")
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            # Here, not in the coroutine: a task cancelled before its first step never runs it.
            self._tasks.discard(done)
            self._running[model] -= 1
            self._held[model] -= estimate_nano

        task.add_done_callback(finished)
        return True

    def _refusal(self, model: str, max_concurrent: int, budget_usd: float, estimate_usd: float) -> str | None:
        if self._closing:
            return "closed"
        if self._running.get(model, 0) >= max_concurrent:
            return "cap"
        budget_nano = usd_to_nano(budget_usd)
        if self._held.get(model, 0) + usd_to_nano(estimate_usd) > budget_nano:
            return "budget"
        if estimate_usd > 0 and time.monotonic() < self._refused_until.get(model, 0.0):
            return "budget"
        return None

    def _skipped(self, model: str, reason: str) -> None:
        if self._selfcal_metrics is not None:
            self._selfcal_metrics.job_skipped(model, reason)

    async def _run(self, binding: PolicyBinding, model: str, job: ShadowJob, budget_nano: int,
                   estimate_nano: int) -> None:
        record = RequestRecord(request_id=new_id("shadow"), public_model=model, endpoint=SHADOW_ENDPOINT,
                               stream=False, route=SHADOW_ROUTE)
        day, started = utc_day(record.created_at), time.perf_counter()
        try:
            granted = await self._store.hold(model, day, record.request_id, estimate_nano, budget_nano)
        except asyncio.CancelledError:  # shutdown mid-hold: whether it was granted is unknown; release it
            await asyncio.shield(self._release_unstarted(model, day, record.request_id))
            raise
        except StoreError as exc:
            logger.warning("shadow job for %s not started: the budget ledger is unreachable (%s)", model, exc)
            self._skipped(model, "store")
            return
        if not granted:
            self._refused_until[model] = time.monotonic() + REFUSAL_MEMORY_S
            self._skipped(model, "budget")
            return
        if self._selfcal_metrics is not None:
            self._selfcal_metrics.job_started(model)
        meter = ShadowMeter(self._store, binding.policy, model, day, record.request_id, estimate_nano, budget_nano)
        record.extra["shadow"] = {"estimated_cost_usd": nano_to_usd(estimate_nano),
                                  "budget_usd_per_day": nano_to_usd(budget_nano)}
        try:
            await job(RequestContext(record, binding.resources, meter))
        except asyncio.CancelledError:
            record.status, record.http_status = "cancelled", 499
            raise
        except Exception as exc:  # a shadow job must never take anything else down
            record.status = error_kind(exc)
            record.http_status = exc.status_code if isinstance(exc, GatewayError) else 500
            logger.warning("shadow job %s for %s failed: %s: %s", record.request_id, model, type(exc).__name__, exc)
            if self._selfcal_metrics is not None:
                self._selfcal_metrics.job_failed(model)
        finally:
            # Its own task, shielded: a job cancelled at shutdown still settles its hold and writes
            # its record (close() waits for these too).
            finishing = asyncio.ensure_future(self._finish(binding, record, model, day, started))
            self._finishing.add(finishing)
            finishing.add_done_callback(self._finishing.discard)
            await asyncio.shield(finishing)

    async def _release_unstarted(self, model: str, day: str, hold_id: str) -> None:
        with contextlib.suppress(StoreError):  # else it lapses after its TTL
            await self._store.settle(model, day, hold_id, 0)

    async def _finish(self, binding: PolicyBinding, record: RequestRecord, model: str, day: str,
                      started: float) -> None:
        for call in record.calls:
            call.used = False  # nothing of a shadow job reaches a client
        record.latency_ms = (time.perf_counter() - started) * 1000
        finalize_record(record, binding.reference_price)
        try:
            await self._store.settle(model, day, record.request_id, usd_to_nano(record.cost_usd))
        except StoreError as exc:  # the hold lapses after its TTL; the record below still says what was spent
            logger.warning("shadow job %s: settling the budget hold failed (%s)", record.request_id, exc)
        try:
            if self._metrics is not None:
                self._metrics.observe(record)
            await self._accounting.submit(record)
        except Exception:
            logger.exception("accounting failed for shadow job %s", record.request_id)

    async def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until no job runs and every record is handed over (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self._tasks or self._finishing:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, grace_s: float) -> None:
        """Take no more jobs; give running ones ``grace_s`` to end, cancel the rest, wait for their records."""
        self._closing = True
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, grace_s))
        if pending:
            logger.info("shutdown: cancelling %d running shadow job(s); their records are still written", len(pending))
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
