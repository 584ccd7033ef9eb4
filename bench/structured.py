"""Structured outputs' cost: output tokens per second with a JSON schema against the same
requests unconstrained, at 1 and 64 concurrent requests; the time to compile a typical
schema; the first-token latency with and without a schema; and jump-forward: output tokens per
second with a schema whose records are mostly forced text (long fixed keys, enums with one
value), on an engine with `structured_jump_forward` on against one with it off, and the share
of output tokens it appended without a forward step of their own (`structured_forced_tokens`).

Both runs generate exactly --new-tokens tokens per request, so that they compare per token
(with jump-forward on, as engines run by default, unless --no-jump-forward):
the unconstrained one with ignore_eos, the constrained one with a schema whose output cannot
end sooner (a list of at least --new-tokens records), so the grammar is live at every step.
Prints a table and writes JSON (bench/results/structured_<device>.json by default). The two
engines of the jump-forward comparison are loaded one after the other (a GPU holds one).

    python bench/structured.py --device cpu
    python bench/structured.py --device cuda --model-dir /models/Llama-3.1-8B-Instruct
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import time
from pathlib import Path

import infire
from infire import SamplingParams, StructuredOutputsParams

RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "tags"],
    "additionalProperties": False,
}

# A record that is mostly forced: long fixed keys, an enum with one value, one free number and
# a choice of two (whose rest is forced once its first token is picked).
FORCED_RECORD = {
    "type": "object",
    "properties": {
        "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 999},
        "account_status_description": {"enum": ["active_and_in_good_standing"]},
        "preferred_contact_method": {"enum": ["electronic_mail_address", "telephone_number"]},
    },
    "required": [
        "customer_identification_number",
        "account_status_description",
        "preferred_contact_method",
    ],
    "additionalProperties": False,
}


def endless_schema(new_tokens: int, record: dict = RECORD) -> dict:
    """Records until the token budget runs out: a record is fewer tokens than its count."""
    return {"type": "array", "items": record, "minItems": new_tokens}


def prompts(n: int) -> list[str]:
    return [f"List people as JSON records (batch {i}): name, age, city and tags." for i in range(n)]


def throughput(engine, n: int, params: SamplingParams) -> tuple[float, int]:
    """Output tokens per second of `n` requests submitted together (n = 1: one at a time)."""
    t = time.perf_counter()
    outs = engine.generate(prompts(n), params, use_tqdm=False)
    dt = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens / dt, tokens


def first_token_ms(engine, params: SamplingParams, repeats: int) -> float:
    """Median time of a one-token request (prompt + first token), one at a time."""
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        engine.generate(f"Describe person number {i} as JSON.", params)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def compile_ms(engine, repeats: int) -> float:
    """Median time to compile a typical schema: a one-token request with a schema never
    seen (a fresh title), less the same request once its schema is cached."""
    fresh, cached = [], []
    for i in range(4 * repeats):
        schema = dict(RECORD, title=f"person-{time.time_ns()}-{i}")
        p = SamplingParams(
            max_tokens=1, temperature=0, structured_outputs=StructuredOutputsParams(json=schema)
        )
        for out in (fresh, cached):
            t = time.perf_counter()
            engine.generate("Describe a person as JSON.", p)
            out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(f - c for f, c in zip(fresh, cached, strict=True))


def jump_forward_rows(engine, n_values, params: SamplingParams, repeats: int) -> dict:
    """Per concurrency: the best tok/s of `repeats` runs of the forced schema, and the share of
    output tokens jump-forward appended (from the engine's counter)."""
    rows = {}
    for n in n_values:
        forced_before = engine.stats()["structured_forced_tokens"]
        runs = [throughput(engine, n, params) for _ in range(repeats)]
        forced = engine.stats()["structured_forced_tokens"] - forced_before
        tps, tokens = max(runs)
        rows[n] = {"tok_s": tps, "tokens": tokens, "forced_share": forced / (tokens * repeats)}
    return rows


def jump_forward_compare(args, n_values) -> dict:
    """The forced schema on an engine with jump-forward on, then on one with it off."""
    forced = StructuredOutputsParams(json=endless_schema(args.new_tokens, FORCED_RECORD))
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, structured_outputs=forced)
    out = {}
    for on in (True, False):
        engine = infire.Engine(model=args.model_dir, device=args.device, structured_jump_forward=on)
        engine.generate(prompts(2), params, use_tqdm=False)  # warm-up
        out["on" if on else "off"] = jump_forward_rows(engine, n_values, params, args.repeats)
        del engine
        gc.collect()
    for n in n_values:
        on, off = out["on"][n], out["off"][n]
        out.setdefault("speedup", {})[n] = on["tok_s"] / off["tok_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None, help="model path (default: the default model)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--machine", default="", help="free text for the results")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--no-jump-forward",
        action="store_true",
        help="the schema-against-unconstrained runs without jump-forward (the masks' cost alone)",
    )
    args = ap.parse_args()

    jump_forward = not args.no_jump_forward
    engine = infire.Engine(
        model=args.model_dir, device=args.device, structured_jump_forward=jump_forward
    )
    plain = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    schema = StructuredOutputsParams(json=endless_schema(args.new_tokens))
    held = SamplingParams(max_tokens=args.new_tokens, temperature=0, structured_outputs=schema)
    engine.generate(prompts(2), plain)  # warm-up (and the grammar's vocabulary trie below)
    engine.generate(prompts(2), held)

    rows = {}
    for n in (1, args.batch):
        # Alternated runs, best of each: a busy machine's noise only ever slows a run down.
        free, held_runs = [], []
        for _ in range(args.repeats):
            free.append(throughput(engine, n, plain))
            held_runs.append(throughput(engine, n, held))
        (free_tps, free_tokens), (held_tps, held_tokens) = max(free), max(held_runs)
        rows[n] = {
            "unconstrained_tok_s": free_tps,
            "schema_tok_s": held_tps,
            "slowdown_pct": 100 * (1 - held_tps / free_tps),
            "tokens": [free_tokens, held_tokens],
        }
    one = SamplingParams(max_tokens=1, temperature=0)
    one_held = SamplingParams(max_tokens=1, temperature=0, structured_outputs=schema)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": args.machine,
        "device": args.device,
        "model": str(args.model_dir or infire.default_model_path()),
        "new_tokens": args.new_tokens,
        "jump_forward": jump_forward,
        "throughput": rows,
        "compile_ms": compile_ms(engine, args.repeats),
        "first_token_ms": {
            "unconstrained": first_token_ms(engine, one, args.repeats),
            "schema": first_token_ms(engine, one_held, args.repeats),
        },
    }
    print(f"{'concurrent':>10} {'free tok/s':>11} {'schema tok/s':>13} {'slower':>7}")
    for n, r in rows.items():
        print(
            f"{n:>10} {r['unconstrained_tok_s']:>11.1f} {r['schema_tok_s']:>13.1f} "
            f"{r['slowdown_pct']:>6.1f}%"
        )
    print(f"compile a typical schema: {result['compile_ms']:.1f} ms")
    ft = result["first_token_ms"]
    print(f"first token: {ft['unconstrained']:.1f} ms free, {ft['schema']:.1f} ms with a schema")
    del engine
    gc.collect()
    jf = result["jump_forward_compare"] = jump_forward_compare(args, list(rows))
    head = ("concurrent", "forced", "jf on tok/s", "jf off tok/s", "speedup")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (10, 7, 12, 13, 8), strict=True)))
    for n in rows:
        on, off = jf["on"][n], jf["off"][n]
        print(
            f"{n:>10} {100 * on['forced_share']:>6.1f}% {on['tok_s']:>12.1f} "
            f"{off['tok_s']:>13.1f} {jf['speedup'][n]:>7.2f}x"
        )
    out = Path(args.out or Path(__file__).parent / "results" / f"structured_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
