"""Data-stage throughput and memory: tuneforge `prepare` vs a straightforward hand-written script.

Both run in this script on the same synthetic support-ticket rows (chat format, ~5% duplicates,
~10% with PII) with dedup and PII redaction on. Each measurement runs in a fresh subprocess whose
whole process tree is sampled for peak memory (PSS: shared pages counted once). Each
measurement is repeated (``--repeat``, alternating the two at a size) and reported as the median
wall time: on a shared 2-core machine single runs of the same code vary by 20%.

    python benchmarks/bench_data.py                      # 10k, 100k, 1M rows (baseline at 10k)
    python benchmarks/bench_data.py --sizes 10000 --baseline-sizes 10000 --repeat 1

Writes benchmarks/results/bench_data.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PRODUCTS = ["billing portal", "mobile app", "REST API", "analytics dashboard", "SSO login", "data export"]
ISSUES = ["keeps crashing when I open", "charged me twice for", "returns a 500 error from", "is very slow in",
          "lost my settings in", "cannot find the button for", "logs me out of", "shows the wrong totals in"]
FILLER = ["since", "the", "last", "update", "yesterday", "and", "my", "whole", "team", "is", "blocked", "please", "look", "into", "it", "as", "soon", "as", "possible", "we", "have", "tried", "clearing", "the", "cache", "reinstalling", "and", "switching", "browsers", "but", "nothing", "works"]
PII = ["reach me at {n}.doe@example.com", "call +1 415-555-{n:04d}", "card 4111 1111 1111 1111 charged",
       "from IP 10.0.{a}.{b}", "see https://status.example.com/incidents/{n}"]
# Customers sign some tickets; about one ticket in ten then has text beyond ASCII.
SIGNATURES = ["Zoë Müller", "José Núñez", "François Lefèvre", "Łukasz Wójcik", "田中 太郎", "Søren Ødegård"]
SYSTEM = "Classify the support ticket. Answer with a JSON object with category, priority and summary."


def synth_rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    recent: list[str] = []
    for i in range(n):
        if recent and rng.random() < 0.05:
            yield recent[rng.randrange(len(recent))]  # an exact duplicate
            continue
        words = rng.sample(FILLER, rng.randint(8, len(FILLER)))
        text = f"Ticket {i}: the {rng.choice(PRODUCTS)} {rng.choice(ISSUES)} {rng.choice(PRODUCTS)} " + " ".join(words)
        if rng.random() < 0.10:
            text += ", " + rng.choice(PII).format(n=i % 10000, a=i % 250, b=(i * 7) % 250)
        if rng.random() < 0.10:
            text += f". Thanks, {rng.choice(SIGNATURES)}"
        answer = json.dumps({"category": rng.choice(["bug", "billing"]), "priority": rng.choice(["low", "high"]),
                             "summary": " ".join(words[:6])})
        line = json.dumps({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                                        {"role": "assistant", "content": answer}]})
        recent = (recent + [line])[-1000:]
        yield line


def write_input(path: Path, n: int) -> None:
    with path.open("w") as f:
        for line in synth_rows(n):
            f.write(line + "\n")


def _tree_pss(root: psutil.Process) -> int:
    """Memory of a process and its children, shared pages counted once (PSS).

    Forked workers share the parent's pages; summing RSS would count those once per process.
    """
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run cmd; return wall seconds, peak memory (PSS) of its process tree, and its JSON stdout."""
    started = time.perf_counter()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, _tree_pss(root))
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{err[-3000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the whole tree (workers are waited for, so theirs are included): unlike wall
    # time, this barely moves when other work shares the machine.
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"wall_s": round(time.perf_counter() - started, 2), "cpu_s": round(cpu, 2),
            "peak_pss_mib": round(peak / 2**20, 1),
            **json.loads(out.strip().splitlines()[-1])}


def summarise(runs: list[dict]) -> dict:
    """The median run by wall time, with every run's wall and CPU seconds and the highest peak memory."""
    median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**median, "peak_pss_mib": max(r["peak_pss_mib"] for r in runs),
            "runs": [{"wall_s": r["wall_s"], "cpu_s": r["cpu_s"]} for r in runs]}


OURS = """
import json, sys
from tuneforge.config import load_config
from tuneforge.data import prepare
cfg = load_config(None, ["data.pii.mode=redact", "data.dedup.exact=true", "data.dedup.near=true"])
ds = prepare(cfg, [sys.argv[1]], out=sys.argv[2])
print(json.dumps({"kept": ds.counts["kept"], "rejected": ds.counts["rejected"], "timings": ds.manifest["timings"]}))
"""

# The script a team typically writes: load everything, loop rows, run every recognizer on every
# row, MinHash each row into an LSH index, tokenise the rendered template row by row.
BASELINE = """
import json, sys, hashlib
from datasketch import MinHash, MinHashLSH
from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
    IpRecognizer, PhoneRecognizer, UrlRecognizer, UsSsnRecognizer)
from transformers import AutoTokenizer
from tuneforge.models import resolve_model
from tuneforge.workspace import Workspace
tok = AutoTokenizer.from_pretrained(resolve_model("bundled:smollm2-135m-instruct", Workspace.from_env()).path)
recs = [EmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer(), IpRecognizer(),
        UsSsnRecognizer(), UrlRecognizer()]
rows = [json.loads(l) for l in open(sys.argv[1])]
seen, lsh, kept = set(), MinHashLSH(threshold=0.8, num_perm=128), []
for i, r in enumerate(rows):
    for m in r["messages"]:
        found = [f for rec in recs for f in rec.analyze(m["content"], rec.supported_entities, None) if f.score >= 0.5]
        for f in sorted(found, key=lambda f: -f.start):
            m["content"] = m["content"][:f.start] + "<" + f.entity_type + ">" + m["content"][f.end:]
    text = "\\n".join(m["content"] for m in r["messages"])
    key = hashlib.sha256(text.lower().encode()).hexdigest()
    if key in seen:
        continue
    seen.add(key)
    words = text.lower().split()
    mh = MinHash(num_perm=128)
    for j in range(max(1, len(words) - 4)):
        mh.update(" ".join(words[j:j + 5]).encode())
    if lsh.query(mh):
        continue
    lsh.insert(str(i), mh)
    r["num_tokens"] = len(tok.apply_chat_template(r["messages"], tokenize=True))
    kept.append(r)
json.dump(kept, open(sys.argv[2], "w"))
print(json.dumps({"kept": len(kept), "rejected": len(rows) - len(kept)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--baseline-sizes", type=int, nargs="*", default=[10_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_data.json")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env["TUNEFORGE_HOME"] = env.get("TUNEFORGE_HOME", str(Path.cwd() / ".tuneforge"))
        # Warm the bundled model's conversion so no run pays it.
        subprocess.run([sys.executable, "-c", "from tuneforge.models import resolve_model;"
                        "from tuneforge.workspace import Workspace;"
                        "resolve_model('bundled:smollm2-135m-instruct', Workspace.from_env())"], env=env, check=True)
        for n in sorted(set(args.sizes) | set(args.baseline_sizes)):
            src = Path(tmp) / f"rows-{n}.jsonl"
            write_input(src, n)
            entry: dict = {"rows": n, "input_mib": round(src.stat().st_size / 2**20, 1)}
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeat):
                for name, script, wanted in (("tuneforge", OURS, args.sizes), ("baseline", BASELINE, args.baseline_sizes)):
                    if n in wanted:
                        out = Path(tmp) / "out"
                        runs.setdefault(name, []).append(measure([sys.executable, "-c", script, str(src), str(out)], env))
                        shutil.rmtree(out, ignore_errors=True)
                        out.unlink(missing_ok=True)
            for name, rs in runs.items():
                entry[name] = r = summarise(rs)
                r["rows_per_s"] = round(n / r["wall_s"])
                r["rows_per_cpu_s"] = round(n / r["cpu_s"])
            if "tuneforge" in entry and "baseline" in entry:
                entry["speedup"] = round(entry["tuneforge"]["rows_per_s"] / entry["baseline"]["rows_per_s"], 1)
            entry["load_avg_1m_after"] = round(os.getloadavg()[0], 2)  # >2 on 2 cores: other work competed
            results.append(entry)
            print(json.dumps(entry), flush=True)
    report = {"benchmark": "data_prepare", "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
              "mem_gib": round(psutil.virtual_memory().total / 2**30, 1)}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
