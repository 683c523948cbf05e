"""Cut OpenAI's openapi document (github.com/openai/openai-openapi) down to the operations the
gateway serves, for tests/test_openai_spec.py: those operations and every component they
reach, with descriptions and examples dropped (they are most of the document's size).

    python scripts/openai_spec_subset.py path/to/openapi.json tests/data/openai-openapi-subset.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OPERATIONS = (("/chat/completions", "post"), ("/completions", "post"), ("/models", "get"),
              ("/models/{model}", "get"), ("/embeddings", "post"), ("/responses", "post"))
DROPPED = frozenset({"description", "example", "examples", "x-oaiMeta", "x-oaiExpandable", "title", "summary",
                     "x-stainless-const", "x-oaiTypeLabel"})


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _lookup(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        # A property may itself be called "description" or "title": keep keys under "properties".
        return {k: (_strip_props(v) if k == "properties" else _strip(v)) for k, v in node.items()
                if k not in DROPPED or not isinstance(v, str | dict | list)}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _strip_props(props: Any) -> Any:
    return {k: _strip(v) for k, v in props.items()} if isinstance(props, dict) else props


def subset(document: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, method in OPERATIONS:
        paths.setdefault(path, {})[method] = document["paths"][path][method]
    seen: set[str] = set()
    stack = list(_refs(paths))
    while stack:
        ref = stack.pop()
        if ref not in seen:
            seen.add(ref)
            stack.extend(_refs(_lookup(document, ref)))
    components: dict[str, dict[str, Any]] = {}
    for ref in sorted(seen):
        _, section, name = ref.removeprefix("#/").split("/")
        components.setdefault(section, {})[name] = _lookup(document, ref)
    return _strip({"openapi": document["openapi"], "info": {"title": "OpenAI API (subset)",
                   "version": document["info"]["version"]}, "paths": paths, "components": components})


def main(argv: list[str]) -> None:
    source, target = Path(argv[0]), Path(argv[1])
    target.write_text(json.dumps(subset(json.loads(source.read_text())), separators=(",", ":"), sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
