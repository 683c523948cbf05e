"""The summed accounting counters, declared once.

:class:`Counters` is the one list of what usage aggregates sum. Everything that handles them is
derived from it: :class:`~gateway.accounting.facts.Contribution` (what one record adds) and
:class:`~gateway.accounting.store.GroupTotals` (what a query returns) extend it; the SQLite
``facts`` columns and their migration, the Redis hash fields and their integer / float
increments, ``GroupTotals.add_counter`` and the ``/v1/gateway/usage`` body read
:data:`COUNTER_FIELDS`; Prometheus counters come from each field's ``metric``.

Adding a counter is one field here plus what a record adds to it in :mod:`gateway.accounting.facts`
(``request_contribution``, and the per-backend split when it differs); an existing SQLite file
gains the column on its next open.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["int", "float"]


def counter(default: int | float, help_text: str, *, metric: str | None = None,
            labels: tuple[str, ...] = (), usage: bool = True) -> Any:
    """A counter field: its type comes from ``default`` (int or float).

    ``metric``: the Prometheus counter it feeds (``slm_gateway_<metric>_total{route,model,*labels}``;
    ``labels`` among those :class:`~gateway.accounting.metrics.GatewayMetrics` fills: ``status``),
    None when none does. ``usage``: whether ``/v1/gateway/usage`` shows its sum.
    """
    return dataclasses.field(
        default=default, metadata={"help": help_text, "metric": metric, "labels": labels, "usage": usage},
    )


@dataclass(slots=True)
class Counters:
    requests: int = counter(0, "Client requests", metric="requests", labels=("status",))
    prompt_tokens: int = counter(0, "Answer prompt tokens", metric="prompt_tokens")
    completion_tokens: int = counter(0, "Answer completion tokens", metric="completion_tokens")
    cost_usd: float = counter(0.0, "Spend in USD, all upstream calls", metric="cost_usd")
    # Prometheus reports reference_cost_usd instead (savings = reference_cost - cost), which
    # also says how much traffic had a reference at all.
    savings_usd: float = counter(0.0, "Savings against the reference LLM, USD")
    # Usage shows the rate (escalation_rate), Prometheus the count.
    escalated: int = counter(0, "Escalated requests", metric="escalations", usage=False)
    # requests_total{status} already counts failures by kind.
    errors: int = counter(0, "Failed requests", usage=False)
    # Speculative decoding (record.extra["speculative"]): acceptance = accepted / drafted, tokens
    # per target pass = emitted / target passes — summed so that both are exact over any window.
    draft_tokens: int = counter(0, "Speculative draft tokens proposed", metric="speculative_draft_tokens")
    accepted_tokens: int = counter(0, "Speculative draft tokens accepted", metric="speculative_accepted_tokens")
    speculative_tokens: int = counter(0, "Tokens emitted by speculative decoding",
                                      metric="speculative_emitted_tokens")
    target_passes: int = counter(0, "Speculative target passes (forward passes or calls)",
                                 metric="speculative_target_passes")
    # A self-calibrating cascade's shadow jobs (records with endpoint "shadow",
    # gateway/serving/shadow.py): not client requests (requests, latency, tokens stay the clients'),
    # but real spend — in cost_usd (and, being unused, against savings) as well as here.
    shadow_jobs: int = counter(0, "Shadow jobs of self-calibrating cascades", metric="shadow_jobs")
    shadow_cost_usd: float = counter(0.0, "Spend of shadow jobs, USD", metric="shadow_cost_usd")


@dataclass(frozen=True, slots=True)
class CounterField:
    name: str
    kind: Kind
    help: str
    metric: str | None
    labels: tuple[str, ...]
    usage: bool

    @property
    def sql_type(self) -> str:
        return "INTEGER" if self.kind == "int" else "REAL"

    def coerce(self, value: Any) -> int | float:
        """A stored or summed value as this counter's type (Redis returns strings, SQLite NULL)."""
        number = float(value or 0)
        return round(number) if self.kind == "int" else number


def _fields() -> tuple[CounterField, ...]:
    out = []
    for item in dataclasses.fields(Counters):
        kind: Kind = "float" if isinstance(item.default, float) else "int"
        meta = item.metadata
        out.append(CounterField(item.name, kind, meta["help"], meta["metric"], meta["labels"], meta["usage"]))
    return tuple(out)


COUNTER_FIELDS: tuple[CounterField, ...] = _fields()
COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in COUNTER_FIELDS)
FIELD_BY_NAME: dict[str, CounterField] = {f.name: f for f in COUNTER_FIELDS}
