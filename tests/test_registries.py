"""Backends and strategies are registered by their config class, read off the policy's unions.

The shipped unions resolve; a union member whose implementation is missing, is not a Strategy
(or Backend), or is a Strategy of another config is reported — by the registry, and by
``slm-gateway policy check``; so is a strategy config under routers/ that no union member names.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
from pydantic import Field

import gateway.runtime
from gateway.backends.registry import BackendRegistry
from gateway.cli import main
from gateway.core.config import StrategyBase
from gateway.core.strategy import ChatRequestView, GatewayResources, RequestContext, Strategy, StrategyEvent
from policies.loader import default_policy_path
from policies.schema import BackendConfig, StrategyConfig
from routers.registry import StrategyRegistry, declared_config
from routers.rules.config import RulesStrategy
from routers.static.config import StaticStrategy


class Mismatched(Strategy[RulesStrategy]):  # a Strategy, but of another strategy's config
    async def chat(self, request: ChatRequestView, ctx: RequestContext) -> AsyncIterator[StrategyEvent]:
        raise NotImplementedError
        yield


class NotAStrategy:
    pass


class PointsAtNothing(StrategyBase):
    type: Literal["nothing"]
    implementation: ClassVar[str] = "routers.no_such_module:Nothing"


class PointsAtAPlainClass(StrategyBase):
    type: Literal["plain"]
    implementation: ClassVar[str] = f"{__name__}:NotAStrategy"


class Disagrees(StrategyBase):
    type: Literal["disagrees"]
    implementation: ClassVar[str] = f"{__name__}:Mismatched"


BrokenUnion = Annotated[
    StaticStrategy | PointsAtNothing | PointsAtAPlainClass | Disagrees, Field(discriminator="type"),
]


def test_the_shipped_unions_resolve() -> None:
    strategies = StrategyRegistry(StrategyConfig)
    assert {"cascade", "learned", "rules", "speculative", "static"} <= set(strategies.types())
    assert strategies.check() == []
    backends = BackendRegistry(BackendConfig)
    assert {"echo", "local", "openai"} <= set(backends.types())
    assert backends.check() == []
    for tag in strategies.types():  # each tag is written once: on its config, which its class names
        assert declared_config(strategies.implementation(tag)) is strategies.table.config_class(tag)


def test_a_broken_member_is_reported() -> None:
    found = StrategyRegistry(BrokenUnion).check()
    problems = [p for p in found if p.startswith("strategy type")]
    assert len(problems) == 3, found
    # ... and the shipped strategies this union leaves out are reported as missing from it.
    missing = sorted(p.split()[0].rsplit(".", 1)[1] for p in found if "is not in the policy's" in p)
    assert missing == ["CascadeStrategy", "LearnedStrategy", "RulesStrategy", "SpeculativeStrategy"]
    assert any("'nothing'" in p and "routers.no_such_module" in p for p in problems)
    assert any("'plain'" in p and "is not a Strategy" in p for p in problems)
    assert any("'disagrees'" in p and "Strategy of RulesStrategy, not of Disagrees" in p for p in problems)


def test_building_a_strategy_reads_its_class_off_the_config() -> None:
    resources = GatewayResources(backends={}, prices={})
    built = StrategyRegistry(StrategyConfig).build("m", StaticStrategy(type="static", backend="b"), resources)
    assert type(built).__name__ == "Static" and built.public_name == "m"
    with pytest.raises(TypeError, match="is not a Strategy"):
        StrategyRegistry(BrokenUnion).build("m", PointsAtAPlainClass(type="plain"), resources)


def test_two_members_with_one_tag_are_refused() -> None:
    class AlsoStatic(StrategyBase):
        type: Literal["static"]
        implementation: ClassVar[str] = "routers.static.strategy:Static"

    with pytest.raises(ValueError, match="'static' is declared by StaticStrategy and"):
        StrategyRegistry(StaticStrategy | AlsoStatic)


@pytest.fixture
def orphan_package(tmp_path: Path) -> Iterator[str]:
    """A strategies package whose ``echo`` folder has a config that no union member names."""
    name = "orphan_strategies"
    (tmp_path / name / "echo").mkdir(parents=True)
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "echo" / "__init__.py").write_text("")
    (tmp_path / name / "echo" / "config.py").write_text(textwrap.dedent('''
        from typing import ClassVar, Literal
        from gateway.core.config import StrategyBase

        class EchoStrategy(StrategyBase):
            type: Literal["echo"]
            implementation: ClassVar[str] = "orphan_strategies.echo.strategy:Echo"
    '''))
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m.split(".")[0] == name]:
            del sys.modules[module]


def test_a_strategy_config_missing_from_the_union_is_reported(orphan_package: str) -> None:
    problems = StrategyRegistry(StrategyConfig).check(package=orphan_package)
    assert problems == [f"{orphan_package}.echo.config.EchoStrategy (type 'echo') is not in the policy's "
                        "StrategyConfig union (policies/schema.py)"]


def test_policy_check_fails_on_a_broken_union(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(default_policy_path())
    assert main(["policy", "check", policy]) == 0
    assert capsys.readouterr().out.strip() == f"{policy}: ok"
    monkeypatch.setattr(gateway.runtime, "StrategyConfig", BrokenUnion)
    assert main(["policy", "check", policy]) == 1
    out = capsys.readouterr().out
    assert "strategy type 'disagrees'" in out and "strategy type 'plain'" in out and "strategy type 'nothing'" in out
