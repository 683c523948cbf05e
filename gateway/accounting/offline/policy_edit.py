"""Write a cascade tier's threshold and calibration into a policy YAML file, keeping its comments.

No round-trip YAML library is a dependency (ruamel is not installed), so the edit is textual:
PyYAML's *composer* gives every node's exact position in the file, and only the value spans of
``threshold`` and ``calibration`` (or one inserted line each, indented like the tier's keys) are
replaced; everything else — comments, order, quoting, ``${ENV}`` references — stays byte for
byte. The result is parsed again and checked to hold the new values. Layouts the textual edit
does not handle (a tier written as a flow mapping ``- {backend: ..., ...}``, a calibration with
block-style ``x`` / ``y`` lists) raise :class:`NeedsRewrite`; the caller may then rewrite the file
with :func:`rewrite_policy` (valid YAML, same content, comments lost — it says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Calibration = tuple[Sequence[float], Sequence[float]]


class NeedsRewrite(Exception):
    """The file's layout at that tier is beyond the comment-keeping edit."""


def format_threshold(value: float) -> str:
    return repr(float(value))  # exact: a rounded threshold could flip a request scored right at it


def format_calibration(calibration: Calibration) -> str:
    xs, ys = calibration
    return "{x: [" + ", ".join(_number(v) for v in xs) + "], y: [" + ", ".join(_number(v) for v in ys) + "]}"


def set_tier_calibration(text: str, model: str, tier: int, threshold: float, calibration: Calibration | None) -> str:
    """``text`` with ``models.<model>.tiers[<tier>]``'s threshold (and calibration, when given) replaced."""
    tier_node = _tier_node(yaml.compose(text), model, tier)
    if tier_node.flow_style:
        raise NeedsRewrite(f"models.{model}.tiers[{tier}] is a flow mapping")
    values = {key.value: value for key, value in tier_node.value if isinstance(key, ScalarNode)}
    edits: list[tuple[int, int, str]] = []
    inserted: list[str] = []
    threshold_node = values.get("threshold")
    if isinstance(threshold_node, ScalarNode):
        edits.append(_span(threshold_node, format_threshold(threshold)))
    elif threshold_node is None:
        inserted.append(f"threshold: {format_threshold(threshold)}")
    else:
        raise NeedsRewrite("threshold is not a scalar")
    if calibration is not None:
        edits += _calibration_edits(values.get("calibration"), calibration, inserted)
    if inserted:
        edits.append(_insertion(text, tier_node, inserted))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    _check(text, model, tier, threshold, calibration)
    return text


def rewrite_policy(text: str, model: str, tier: int, threshold: float, calibration: Calibration | None) -> str:
    """The fallback: the whole file re-serialised with the new values (comments are lost)."""
    data = yaml.safe_load(text)
    tier_data = data["models"][model]["tiers"][tier]
    tier_data["threshold"] = float(threshold)
    if calibration is not None:
        xs, ys = calibration
        tier_data["calibration"] = {"x": [_rounded(v) for v in xs], "y": [_rounded(v) for v in ys]}
    header = "# Rewritten by `slm-gateway selfcal apply` (its layout was beyond a comment-keeping edit).\n"
    rewritten = header + yaml.safe_dump(data, sort_keys=False)
    _check(rewritten, model, tier, threshold, calibration)
    return rewritten


def _calibration_edits(node: Node | None, calibration: Calibration, inserted: list[str]) -> list[tuple[int, int, str]]:
    if node is None:
        inserted.append(f"calibration: {format_calibration(calibration)}")
        return []
    if isinstance(node, MappingNode) and node.flow_style:
        return [_span(node, format_calibration(calibration))]
    if not isinstance(node, MappingNode):
        raise NeedsRewrite("calibration is not a mapping")
    parts = {key.value: value for key, value in node.value if isinstance(key, ScalarNode)}
    edits = []
    for name, points in zip(("x", "y"), calibration, strict=True):
        sequence = parts.get(name)
        if not isinstance(sequence, SequenceNode) or not sequence.flow_style:
            raise NeedsRewrite(f"calibration.{name} is not a [..] list")
        edits.append(_span(sequence, "[" + ", ".join(_number(v) for v in points) + "]"))
    return edits


def _insertion(text: str, tier_node: MappingNode, lines: list[str]) -> tuple[int, int, str]:
    """New keys go on their own lines after the tier's first key (whose value must be one line)."""
    first_key, first_value = tier_node.value[0]
    if not isinstance(first_value, ScalarNode) or first_value.start_mark.line != first_value.end_mark.line:
        raise NeedsRewrite("the tier's first key does not fit on one line")
    line_end = text.find("\n", first_value.end_mark.index)
    at = len(text) if line_end < 0 else line_end + 1
    indent = " " * first_key.start_mark.column
    block = "".join(f"{indent}{line}\n" for line in lines)
    return at, at, block if line_end >= 0 else "\n" + block


def _tier_node(root: Node | None, model: str, tier: int) -> MappingNode:
    models = _child(root, "models")
    cascade = _child(models, model)
    tiers = _child(cascade, "tiers")
    if not isinstance(tiers, SequenceNode) or not 0 <= tier < len(tiers.value):
        raise KeyError(f"models.{model}.tiers[{tier}] is not in the policy")
    node = tiers.value[tier]
    if not isinstance(node, MappingNode):
        raise KeyError(f"models.{model}.tiers[{tier}] is not a mapping")
    return node


def _child(node: Node | None, key: str) -> Node:
    if isinstance(node, MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                child: Node = value
                return child
    raise KeyError(f"no {key!r} in the policy")


def _span(node: Node, replacement: str) -> tuple[int, int, str]:
    return node.start_mark.index, node.end_mark.index, replacement


def _check(text: str, model: str, tier: int, threshold: float, calibration: Calibration | None) -> None:
    tier_data: dict[str, Any] = yaml.safe_load(text)["models"][model]["tiers"][tier]
    if float(tier_data["threshold"]) != float(threshold):
        raise ValueError("the edited policy does not hold the new threshold")
    if calibration is not None:
        written = tier_data.get("calibration") or {}
        expected = {"x": [_rounded(v) for v in calibration[0]], "y": [_rounded(v) for v in calibration[1]]}
        if {"x": [float(v) for v in written.get("x", [])], "y": [float(v) for v in written.get("y", [])]} != expected:
            raise ValueError("the edited policy does not hold the new calibration")


def _rounded(value: float) -> float:
    return round(float(value), 6)  # breakpoints as `slm-gateway calibrate` writes them


def _number(value: float) -> str:
    return repr(_rounded(value))
