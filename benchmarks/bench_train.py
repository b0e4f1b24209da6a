"""Training throughput: a plain Hugging Face LoRA script vs `tuneforge train`, on the same data.

Baseline: what a team typically writes: `get_peft_model` + `transformers.Trainer` with
`DataCollatorForSeq2Seq` (each micro-batch padded to its longest row), random order, default
settings otherwise. Ours: `tuneforge.train.train()` (on CPU: length-grouped batches, the LM head on
trained positions only, no attention mask for right padding, PEFT's fp32 adapter-input cast off
under bf16 autocast; on CUDA padding-free packing with a variable-length attention kernel, flash-attn's
or PyTorch's own, TRL's fused LM-head loss, and Liger's layer kernels when liger-kernel is installed).
Both get the same
LoRA config (r=16, alpha=32, dropout 0.05, all linear layers), the same weights dtype and autocast,
the same micro-batch, and one pass over the same rows: `--steps * --batch` rows drawn from the
quickstart dataset (examples/support_tickets/generate.py + `tuneforge data prepare`, as `make demo`),
tokenised once with tuneforge's chat-template masks, so both train the same useful tokens.

Measured per run, each in a fresh subprocess, baseline and ours alternating over `--rounds`:
- useful tokens/s: non-pad tokens of the rows trained / wall time from the trainer's
  on_train_begin to on_train_end (model load, tokenisation and saving excluded); the same per
  second of the process's CPU time as well, which moves less when other work shares the CPU;
- MFU: 6 * N * useful tokens/s / peak FLOP/s, N = all parameters of the model with its adapters
  (the usual forward+backward estimate; LoRA skips the frozen weights' gradients, so this
  overstates the work a little, equally for both). Peak: H100 bf16 dense 989 TFLOP/s on CUDA
  (H200 the same), on CPU the best of a few large matmuls in the run's dtype, measured here;
- peak memory: CUDA max allocated on GPU; on CPU the peak PSS of the worker process, sampled.

    python benchmarks/bench_train.py                         # CPU, bundled SmolLM2-135M
    python benchmarks/bench_train.py --shape llama-1b --device cuda --steps 30 --batch 8
    python benchmarks/bench_train.py --shape llama-8b --device cuda --peft qlora --batch 2 --gradient-checkpointing
    python benchmarks/bench_train.py --quick                 # tiny random model, for a smoke test

A GPU machine without network access or the data stage's packages: run `--prepare-only --home DIR`
where tuneforge is installed (the quickstart data, prepared once for the bundled tokenizer, which
every shape shares), copy DIR over, and run there with `--home DIR`: the workers then need only
torch, transformers, peft, trl, datasets, accelerate and pydantic, with `PYTHONPATH=src`.

Writes benchmarks/results/bench_train.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "support_tickets"
BUNDLED = "bundled:smollm2-135m-instruct"
GPU_PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "a100": 312e12}  # dense, no sparsity
# Random-initialised shapes of the public configs (weights are never downloaded).
SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", bias="none", task_type="CAUSAL_LM")


# ---------------------------------------------------------------------------------------------
# parent: data, models, alternating runs, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=["bundled", "llama-1b", "llama-8b"], default="bundled")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (= micro-batches) per run")
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (rows per step)")
    ap.add_argument("--rounds", type=int, default=2, help="baseline/ours pairs, alternating order")
    ap.add_argument("--peft", choices=["lora", "qlora"], default="lora",
                    help="qlora (CUDA): 4-bit NF4 base with double quantisation; the baseline is the usual "
                    "recipe (BitsAndBytesConfig + prepare_model_for_kbit_training + get_peft_model)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations, in both runs")
    ap.add_argument("--kernels", choices=["auto", "liger", "none"], default="auto",
                    help="ours' train.kernels (auto: Liger's layer kernels on CUDA when liger-kernel is installed)")
    ap.add_argument("--quick", action="store_true", help="tiny random model, 2 steps, 1 round (smoke test)")
    ap.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "tuneforge-bench-train",
                    help="workspace for the converted model and prepared data (reused between runs)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_train.json")
    ap.add_argument("--prepare-only", action="store_true",
                    help="prepare the data and the tokenizer in --home, then exit (for an offline machine)")
    ap.add_argument("--worker", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.job))))
        return

    import torch

    home = args.home.resolve()
    env = {**os.environ, "TUNEFORGE_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    if args.prepare_only:
        print(f"prepared {_prepared(home, env)} and {_tokenizer(home)}; run with --home {home}")
        return
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    shape = "tiny" if args.quick else args.shape
    if args.peft == "qlora" and device != "cuda":
        sys.exit("--peft qlora needs --device cuda (bitsandbytes 4-bit weights)")
    if shape.startswith("llama") and device != "cuda":
        sys.exit(f"--shape {shape} is a GPU shape (random-init, bf16); use --device cuda or --shape bundled")
    steps = args.steps or (2 if args.quick else 8 if device == "cpu" else 30)
    batch = args.batch or (2 if args.quick else 4 if device == "cpu" else 8)
    rounds = 1 if args.quick else args.rounds
    subset = _subset(_prepared(home, env), steps * batch, home)
    model_dir = _model(shape, home, device)
    precision = "bf16" if device == "cpu" or torch.cuda.is_bf16_supported() else "fp32"
    peak, peak_source = _peak_flops(device, precision)
    job = {"model": str(model_dir), "data": str(subset), "batch": batch, "device": device, "precision": precision,
           "peft": args.peft, "checkpointing": args.gradient_checkpointing, "kernels": args.kernels,
           "home": str(home)}

    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "ours": []}
    for r in range(rounds):
        for variant in (("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")):
            result = _measure(variant, job, env)
            result["mfu"] = round(6 * result["params"] * result["useful_tokens_per_s"] / peak, 5)
            runs[variant].append(result)
            print(f"round {r + 1} {variant:8s} {result['useful_tokens_per_s']:9.1f} useful tok/s  "
                  f"{result['useful_tokens_per_cpu_s']:7.1f} per CPU-s  steps {result['steps']}  pad {result.get('pad_fraction', '-')}  MFU {result['mfu']:.4f}  "
                  f"peak {result['peak_mem_mib']:.0f} MiB", flush=True)
    summary = {v: _median(rs) for v, rs in runs.items()}
    b, o = summary["baseline"], summary["ours"]
    report = {
        "benchmark": "bench_train",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shape": shape, "model": str(model_dir) if shape != "bundled" else BUNDLED, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "precision": precision, "steps": steps, "micro_batch": batch,
        "peft": args.peft, "gradient_checkpointing": args.gradient_checkpointing,
        "rows": steps * batch, "rounds": rounds,
        "peak_flops": peak, "peak_flops_source": peak_source,
        "mfu_formula": "6 * N_params(total, with adapters) * useful_tokens_per_s / peak_flops",
        "kernels": {"flash_attn": _installed("flash_attn"), "liger_kernel": _installed("liger_kernel")},
        "runs": runs,
        "median": summary,
        "ratio_ours_over_baseline": {
            "useful_tokens_per_s": round(o["useful_tokens_per_s"] / b["useful_tokens_per_s"], 3),
            "useful_tokens_per_cpu_s": round(o["useful_tokens_per_cpu_s"] / b["useful_tokens_per_cpu_s"], 3),
            "mfu": round(o["mfu"] / b["mfu"], 3) if b["mfu"] else None,
            "peak_mem": round(o["peak_mem_mib"] / b["peak_mem_mib"], 3),
        },
        "note": "the CPU may be shared with other work; compare ratios from one run, not absolute numbers",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_ours_over_baseline"]), f"→ {args.out}")


def _bundled(home: Path) -> Path:
    from tuneforge.models import resolve_model
    from tuneforge.workspace import Workspace

    return resolve_model(BUNDLED, Workspace(home)).path


def _tokenizer(home: Path) -> Path:
    """The bundled tokenizer alone (all shapes use it), saved once so that a GPU machine needs no model package."""
    target = home / "bench-models" / "tokenizer"
    if not (target / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tmp = target.with_name(f".tokenizer.{os.getpid()}.tmp")
        AutoTokenizer.from_pretrained(_bundled(home)).save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def _model(shape: str, home: Path, device: str) -> Path:
    """The bundled model's directory, or a random-initialised shape with the bundled tokenizer."""
    if shape == "bundled":
        return _bundled(home)
    target = home / "bench-models" / shape
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(_tokenizer(home))
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if shape == "tiny":
        cfg.vocab_size = len(tok)
    torch.manual_seed(0)
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    with torch.device("cuda" if device == "cuda" and shape != "tiny" else "cpu"):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(previous)
    tmp = target.with_name(f".{shape}.{os.getpid()}.tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    del model
    os.replace(tmp, target)
    return target


def _prepared(home: Path, env: dict[str, str]) -> Path:
    """The quickstart tickets, prepared (as `make demo` does) for the bundled tokenizer and chat template,
    which every shape here shares: training checks both against the dataset's manifest."""
    raw = home / "quickstart"
    if not (raw / "tickets.jsonl").is_file():
        subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--out", str(raw)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    out = home / "prepared" / "bundled-tokenizer"
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "tuneforge.cli", "data", "prepare", str(raw / "tickets.jsonl"),
                        "--config", str(EXAMPLE / "tuneforge.yaml"), "--out", str(out),
                        "--set", f"model.base={_bundled(home)}",
                        "--set", f"data.decontaminate.eval_sets=[{raw / 'golden.jsonl'}]",
                        "--set", f"data.mix.path={raw / 'general.jsonl'}"],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def _subset(dataset: Path, rows: int, home: Path) -> Path:
    """``rows`` train rows drawn at random (seed 0), no val split: a dataset both runs read whole."""
    lines = (dataset / "train.jsonl").read_text().splitlines()
    if rows > len(lines):
        sys.exit(f"--steps * --batch = {rows} rows, but the prepared quickstart set has {len(lines)}")
    picked = random.Random(0).sample(lines, rows)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["fingerprint"] = f"{manifest['fingerprint'][:48]}{rows:016d}"
    out = home / "subsets" / f"{dataset.name}-{rows}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(picked) + "\n")
    (out / "val.jsonl").write_text("")
    (out / "test.jsonl").write_text("")
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _peak_flops(device: str, precision: str) -> tuple[float, str]:
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name().lower()
        peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), GPU_PEAK_BF16["h100"])
        return peak, f"datasheet bf16 dense for {name}"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(8):
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * n**3 / best, f"best of 8x4 {n}x{n} {dtype} matmuls on {torch.get_num_threads()} threads"


def _measure(variant: str, job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one worker; add its peak PSS (CPU: shared pages counted once) sampled from outside."""
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--job", json.dumps(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        with contextlib.suppress(psutil.Error):
            for p in [root, *root.children(recursive=True)]:
                total += p.memory_full_info().pss
        peak = max(peak, total)
        time.sleep(0.5)  # reading smaps costs CPU that the measured run would otherwise have
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    if job["device"] == "cpu":
        result["peak_pss_mib"] = round(peak / 2**20, 1)
        result["peak_mem_mib"] = result["peak_pss_mib"]
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("useful_tokens_per_s", "useful_tokens_per_cpu_s", "mfu", "peak_mem_mib", "train_s")
    return {k: round(statistics.median(r[k] for r in runs), 5) for k in keys}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------------------------------------
# workers: one training run each, timed from inside the trainer


def _timer() -> Any:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """Wall time of the training loop alone, and the size of the model being trained."""

        def __init__(self) -> None:
            self.began = self.ended = 0.0
            self.cpu_began = self.cpu_ended = 0.0  # process CPU time: steadier than wall time on a shared CPU
            self.params = 0

        def _sync(self) -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
            self.params = sum(p.numel() for p in model.parameters())
            self._sync()
            self.began, self.cpu_began = time.perf_counter(), time.process_time()
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self._sync()
            self.ended, self.cpu_ended = time.perf_counter(), time.process_time()
            return control

    return Timer()


def _examples(job: dict[str, Any]) -> tuple[Any, list[Any]]:
    from transformers import AutoTokenizer

    from tuneforge.train._tokenize import KINDS, build_examples, read_split

    tok = AutoTokenizer.from_pretrained(job["model"])
    examples, _ = build_examples(tok, read_split(Path(job["data"]) / "train.jsonl"), KINDS["sft"])
    return tok, examples


def _finish(job: dict[str, Any], timer: Any, steps: int, examples: list[Any], extra: dict[str, Any]) -> dict[str, Any]:
    import torch

    seconds = timer.ended - timer.began
    useful = sum(len(e.input_ids) for e in examples)
    cpu = timer.cpu_ended - timer.cpu_began
    out = {"steps": steps, "params": timer.params, "useful_tokens": useful, "train_s": round(seconds, 3),
           "useful_tokens_per_s": round(useful / seconds, 2), "train_cpu_s": round(cpu, 3),
           "useful_tokens_per_cpu_s": round(useful / cpu, 2) if cpu > 0 else None, **extra}
    if job["device"] == "cuda":
        out["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_baseline(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok, examples = _examples(job)
    cuda = job["device"] == "cuda"
    bf16 = job["precision"] == "bf16"
    checkpointing = job["checkpointing"]
    if job["peft"] == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.bfloat16, quantization_config=quant,
                                                     device_map={"": 0})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    else:
        model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.bfloat16 if bf16 else torch.float32)
        if cuda:
            model = model.to("cuda")
    model = get_peft_model(model, LoraConfig(**LORA))
    data = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})
    collate = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    seen = {"real": 0, "padded": 0}

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        seen["real"] += int(batch["attention_mask"].sum())
        seen["padded"] += int(batch["attention_mask"].numel())
        return batch

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=job["batch"], num_train_epochs=1,
                                 learning_rate=2e-4, bf16=bf16, use_cpu=not cuda, report_to="none",
                                 save_strategy="no", logging_steps=1_000_000, disable_tqdm=True, seed=0,
                                 activation_checkpointing=checkpointing)
        timer = _timer()
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=counting, callbacks=[timer])
        trainer.train()
    pad = 1 - seen["real"] / seen["padded"]
    return _finish(job, timer, trainer.state.global_step, examples, {"pad_fraction": round(pad, 4)})


def run_ours(job: dict[str, Any]) -> dict[str, Any]:
    from tuneforge.config import load_config
    from tuneforge.train import train
    from tuneforge.workspace import Workspace

    _, examples = _examples(job)
    cfg = load_config(None, [f"model.base={job['model']}", f"train.batch_size={job['batch']}", "train.epochs=1",
                             "train.save_every_steps=null", f"train.precision={job['precision']}",
                             "train.lr=2e-4", "tracking.enabled=false", f"train.peft={job['peft']}",
                             f"train.gradient_checkpointing={str(job['checkpointing']).lower()}",
                             f"train.kernels={job['kernels']}"])
    timer = _timer()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, data=job["data"], out=Path(tmp) / "adapter", workspace=Workspace(Path(tmp) / "home"),
                       callbacks=[timer])
    return _finish(job, timer, result.metrics["steps"], examples,
                   {"packing": result.meta["packing"]["mode"], "kernels": result.meta["kernels"]["name"]})


WORKERS = {"baseline": run_baseline, "ours": run_ours}


if __name__ == "__main__":
    main()
