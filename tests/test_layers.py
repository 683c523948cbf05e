"""The import layers of docs/architecture.md, enforced from the code's own imports.

Every module under gateway/, routers/ and policies/ is parsed (never imported) and every import
it makes is checked — module-level, inside functions, under ``TYPE_CHECKING``, and
``importlib.import_module("literal")`` — against the layer it belongs to:

0. core          gateway/core/*                                  imports nothing of ours
1. configs       gateway/backends/<kind>/config.py, routers/<x>/[<sub>/]config.py   core, configs
2. policies      policies/*                                      core, configs
3. implementations  gateway/backends/**, routers/**              core, configs, policies, own kind;
                 routers never import gateway.backends (only the Backend interface); backends
                 never import routers
4. service       the rest of gateway/                            anything below; of routers only
                 the registry (routers.registry) and configs
5. tools         */offline/**, gateway/cli.py, gateway/keys_cli.py   anything; imported by no layer below
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("gateway", "routers", "policies")
TOOL_MODULES = {"gateway.cli", "gateway.keys_cli"}
# A kind's or strategy's config, or one of its sub-packages' (routers/cascade/selfcal/config.py).
CONFIG_MODULE = re.compile(r"^(gateway\.backends|routers)(\.[a-z_0-9]+)+\.config$")


class Layer(IntEnum):
    CORE = 0
    CONFIG = 1
    POLICIES = 2
    IMPLEMENTATION = 3
    SERVICE = 4
    TOOLS = 5


def layer_of(module: str) -> Layer:
    parts = module.split(".")
    if "offline" in parts or module in TOOL_MODULES:
        return Layer.TOOLS
    if module == "gateway.core" or module.startswith("gateway.core."):
        return Layer.CORE
    if CONFIG_MODULE.match(module):
        return Layer.CONFIG
    if parts[0] == "policies":
        return Layer.POLICIES
    if parts[0] == "routers" or module.startswith("gateway.backends"):
        return Layer.IMPLEMENTATION
    return Layer.SERVICE


def is_router_code(module: str) -> bool:
    return module.split(".")[0] == "routers" and layer_of(module) == Layer.IMPLEMENTATION


def is_backend_code(module: str) -> bool:
    return module.startswith("gateway.backends") and layer_of(module) == Layer.IMPLEMENTATION


def forbidden(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (both project modules), or None."""
    mine, theirs = layer_of(importer), layer_of(imported)
    if theirs > mine:
        return f"upward import: {mine.name.lower()} {importer} -> {theirs.name.lower()} {imported}"
    if mine == Layer.CORE and theirs != Layer.CORE:
        return f"core imports nothing of ours: {imported}"
    if is_router_code(importer) and is_backend_code(imported):
        return f"routers reach backends only through gateway.core.backend.Backend, not {imported}"
    if is_backend_code(importer) and imported.split(".")[0] == "routers":
        return f"backends never import routers: {imported}"
    if mine == Layer.SERVICE and is_router_code(imported) and imported != "routers.registry":
        return f"the service composes strategies through routers.registry only, not {imported}"
    return None


@dataclass(frozen=True)
class Import:
    line: int
    module: str


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for root in ROOTS for path in sorted((REPO / root).rglob("*.py"))}


def imports_in(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import in ``source`` (a module named ``module``), as absolute dotted names."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(node.lineno, base))
            # `from pkg import mod` imports pkg.mod when it is a module.
            found += [Import(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append(Import(node.lineno, first.value))
    return found


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}


def violations(path: str, source: str, modules: set[str]) -> list[str]:
    """``file:line: why`` for each forbidden import in one file (``path`` relative to the repo)."""
    file = REPO / path
    module = module_name(file)
    out = []
    for item in imports_in(source, module, file.name == "__init__.py"):
        target = resolve(item.module, modules)
        if target is None or target == module:
            continue
        reason = forbidden(module, target)
        if reason is not None:
            out.append(f"{path}:{item.line}: {reason}")
    return out


def resolve(name: str, modules: set[str]) -> str | None:
    """The project module an imported name loads (its longest known prefix), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def all_violations() -> list[str]:
    modules = project_modules()
    names = set(modules)
    out = []
    for path in modules.values():
        out += violations(str(path.relative_to(REPO)), path.read_text(), names)
    return out


# --- the rule, on the real code -------------------------------------------------------------


def test_no_module_imports_across_its_layer() -> None:
    problems = all_violations()
    assert not problems, "imports that break docs/architecture.md's layers:\n" + "\n".join(problems)


def test_package_inits_import_nothing() -> None:
    """Importing a config (routers/x/config.py) runs its packages' __init__ files: they stay empty
    of imports, so a config never drags an implementation (or torch) in."""
    offenders = [
        str(path.relative_to(REPO)) for root in ROOTS for path in (REPO / root).rglob("__init__.py")
        if any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(ast.parse(path.read_text())))
    ]
    assert offenders == []


def test_every_module_has_a_layer_and_the_layers_are_populated() -> None:
    layers = {layer_of(module) for module in project_modules()}
    assert layers == set(Layer)
    assert layer_of("routers.static.config") == Layer.CONFIG
    assert layer_of("routers.cascade.selfcal.config") == Layer.CONFIG
    assert layer_of("routers.cascade.selfcal.judges.matching") == Layer.IMPLEMENTATION
    assert layer_of("gateway.backends.echo.config") == Layer.CONFIG
    assert layer_of("routers.cascade.offline.cli") == Layer.TOOLS
    assert layer_of("gateway.runtime") == Layer.SERVICE


# --- the rule fails when it should (synthetic modules, real checker) ------------------------

MODULES = set(project_modules())


@pytest.mark.parametrize(("path", "source", "expected"), [
    ("routers/static/strategy.py", "from gateway.runtime import PolicyRuntime\n",
     "routers/static/strategy.py:1: upward import: implementation routers.static.strategy -> service gateway.runtime"),
    ("routers/rules/strategy.py", "import os\n\ndef f():\n    from gateway.serving import scope\n",
     "routers/rules/strategy.py:4: upward import"),
    ("routers/cascade/strategy.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from gateway.backends.local.backend import LocalModelBackend\n",
     "routers/cascade/strategy.py:3: routers reach backends only through"),
    ("gateway/backends/openai/backend.py", "from routers.targets import Target\n",
     "gateway/backends/openai/backend.py:1: backends never import routers"),
    ("gateway/serving/scope.py", "from routers.static.strategy import Static\n",
     "gateway/serving/scope.py:1: the service composes strategies through routers.registry only"),
    ("gateway/core/strategy.py", "from policies.schema import Policy\n",
     "gateway/core/strategy.py:1: upward import: core gateway.core.strategy -> policies"),
    ("routers/static/config.py", "from routers.static.strategy import Static\n",
     "routers/static/config.py:1: upward import: config"),
    ("gateway/runtime.py", "import importlib\nimportlib.import_module('routers.cascade.offline.cli')\n",
     "gateway/runtime.py:2: upward import: service gateway.runtime -> tools"),
    ("routers/learned/strategy.py", "from . import offline\n",
     "routers/learned/strategy.py:1: upward import"),
])
def test_a_forbidden_import_is_reported_with_its_file_and_line(path: str, source: str, expected: str) -> None:
    found = violations(path, source, MODULES)
    assert any(problem.startswith(expected) for problem in found), found


@pytest.mark.parametrize(("path", "source"), [
    ("routers/static/strategy.py", "from gateway.core.backend import Backend\nfrom routers.static.config import X\n"),
    ("routers/cascade/strategy.py", "from policies.loader import PolicyError\nfrom routers.learned import router\n"),
    ("gateway/runtime.py", "from routers.registry import StrategyRegistry\nfrom routers.rules.config import Rule\n"),
    ("routers/cascade/offline/cli.py", "from gateway.runtime import PolicyRuntime\n"),
    ("gateway/cli.py", "from routers.cascade.offline import cli\n"),
])
def test_allowed_imports_pass(path: str, source: str) -> None:
    assert violations(path, source, MODULES) == []


# --- what the layers buy: no torch unless a policy needs it ---------------------------------


def test_importing_the_app_does_not_import_torch() -> None:
    code = ("import sys, gateway.app, gateway.cli, gateway.runtime, policies.schema\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'sklearn', 'llama_cpp') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_policy_without_local_models_starts_without_torch() -> None:
    """The registries import a kind's implementation only when a policy uses it."""
    code = (
        "import asyncio, sys\n"
        "from gateway.runtime import PolicyRuntime\n"
        "from policies.loader import parse_policy\n"
        "policy = parse_policy({'backends': {'e': {'type': 'echo'}, 'u': {'type': 'openai'}},\n"
        "    'models': {'a': {'type': 'static', 'backend': 'e'},\n"
        "               'b': {'type': 'rules', 'default': 'u', 'rules': [{'name': 'x', 'target': 'a'}]}}})\n"
        "async def main():\n"
        "    runtime = await PolicyRuntime.start(policy)\n"
        "    await runtime.close()\n"
        "asyncio.run(main())\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sklearn', 'llama_cpp') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert 'routers.speculative.strategy' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
