"""Grammar-constrained decoding libraries on SmolLM2's tokenizer: schema compile time and the
per-token cost of the token mask, llguidance vs xgrammar (issue 19: pick by measured overhead).

Each library compiles the same JSON schemas; then a valid document is "decoded" token by token
(its own tokenization): per token the library computes the allowed-token mask and advances by
the token. Nothing here runs the model, so the figures are the constraint's own cost, to set
against the model's per-token time (docs/benchmarks.md).

    OMP_NUM_THREADS=1 python -m loadtests.bench_grammar --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

SCHEMAS: dict[str, dict[str, Any]] = {
    "weather_tool": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                      "unit": {"type": "string", "enum": ["c", "f"]}},
                     "required": ["city", "days", "unit"], "additionalProperties": False},
    "nested_order": {"type": "object", "properties": {
        "id": {"type": "string"}, "total": {"type": "number"},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"], "additionalProperties": False}},
        "customer": {"type": "object", "properties": {"name": {"type": "string"},
                                                      "email": {"type": ["string", "null"]}},
                     "required": ["name", "email"], "additionalProperties": False}},
        "required": ["id", "total", "items", "customer"], "additionalProperties": False},
}
DOCUMENTS = {
    "weather_tool": {"city": "Paris", "days": 3, "unit": "c"},
    "nested_order": {"id": "A-17", "total": 42.5, "items": [{"sku": "x1", "qty": 2}, {"sku": "y9", "qty": 1}],
                     "customer": {"name": "Ada Lovelace", "email": None}},
}


def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from gateway.backends.local.loader import ensure_hf_directory, resolve_source

    return AutoTokenizer.from_pretrained(str(ensure_hf_directory(resolve_source("smollm2"))), local_files_only=True)


def bench_llguidance(tokenizer: Any, schema: dict[str, Any], tokens: list[int], repeat: int) -> tuple[float, float]:
    import llguidance
    import llguidance.hf
    import llguidance.numpy

    lltok = llguidance.hf.from_tokenizer(tokenizer)
    compiles, per_token = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                defaults={"whitespace_flexible": False})
        matcher = llguidance.LLMatcher(lltok, grammar)
        compiles.append(time.perf_counter() - started)
        mask = llguidance.numpy.allocate_token_bitmask(1, lltok.vocab_size)
        started = time.perf_counter()
        for token in tokens:
            llguidance.numpy.fill_next_token_bitmask(matcher, mask, 0)
            if not matcher.consume_token(token):
                raise RuntimeError(f"llguidance rejected token {token}: {matcher.get_error()}")
        per_token.append((time.perf_counter() - started) / len(tokens))
    return statistics.median(compiles), statistics.median(per_token)


def bench_xgrammar(tokenizer: Any, schema: dict[str, Any], tokens: list[int], repeat: int) -> tuple[float, float]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer)
    compiles, per_token = [], []
    for _ in range(repeat):
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        started = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
        matcher = xgr.GrammarMatcher(compiled)
        compiles.append(time.perf_counter() - started)
        bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
        started = time.perf_counter()
        for token in tokens:
            matcher.fill_next_token_bitmask(bitmask)
            if not matcher.accept_token(token):
                raise RuntimeError(f"xgrammar rejected token {token}")
        per_token.append((time.perf_counter() - started) / len(tokens))
    return statistics.median(compiles), statistics.median(per_token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--libraries", default="llguidance,xgrammar")
    args = parser.parse_args()
    tokenizer = smollm2_tokenizer()
    print(f"# bench_grammar: SmolLM2 tokenizer ({len(tokenizer)} tokens), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, load average {os.getloadavg()[0]:.2f}, repeat {args.repeat}")
    print("| library | schema | doc tokens | compile ms | mask+advance µs/token |")
    print("| --- | --- | --- | --- | --- |")
    for name, schema in SCHEMAS.items():
        document = json.dumps(DOCUMENTS[name], separators=(",", ":"))
        tokens = tokenizer.encode(document, add_special_tokens=False)
        for library in args.libraries.split(","):  # interleaved: same schema, each library in turn
            bench = bench_llguidance if library == "llguidance" else bench_xgrammar
            compile_s, token_s = bench(tokenizer, schema, tokens, args.repeat)
            print(f"| {library} | {name} | {len(tokens)} | {compile_s * 1000:.2f} | {token_s * 1e6:.1f} |")


if __name__ == "__main__":
    main()
