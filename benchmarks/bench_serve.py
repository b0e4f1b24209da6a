"""Serving throughput and latency: the local engine vs naive sequential HF generate.

Runs on the bundled SmolLM2-135M-Instruct. For each number of distinct adapters (0 = base only) and
each concurrency, ``concurrency`` closed-loop clients send chat prompts round-robin over the
adapters; each measures time to first token (TTFT) and end to end (e2e). The baseline answers the
same prompts one at a time with ``model.generate`` (PEFT ``set_adapter`` per request).
Adapters are random-init LoRA (r=16, all projections): speed does not depend on what they learned.

    python benchmarks/bench_serve.py                                 # concurrency 1 4 16, adapters 0 1 4
    python benchmarks/bench_serve.py --concurrency 16 --adapters 4 --max-tokens 32

Writes benchmarks/results/bench_serve.json. Other systems plug in as runners: a runner is an async
function (prompts, adapter names, concurrency) -> Measurement; see RUNNERS (vLLM CPU and the
gateway columns are added there). With --vllm, ``gateway_overhead`` in the JSON is what the gateway
adds to one request at a time (paired requests through the gateway and straight to vLLM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASE = "bundled:smollm2-135m-instruct"
TOPICS = ["a lighthouse keeper", "a lost parcel", "a robot chef", "a late train", "a broken printer",
          "a mountain village", "a support ticket queue", "a refund that never came"]


@dataclass
class Measurement:
    system: str
    adapters: int
    concurrency: int
    requests: int
    output_tokens: int
    wall_s: float
    tok_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measurement(system: str, adapters: int, concurrency: int, ttft: list[float], e2e: list[float], tokens: int,
                wall: float) -> Measurement:
    return Measurement(system, adapters, concurrency, len(e2e), tokens, round(wall, 3), round(tokens / wall, 1),
                       round(statistics.median(ttft), 4), round(pct(ttft, 0.99), 4),
                       round(statistics.median(e2e), 4), round(pct(e2e, 0.99), 4))


def chat_prompts(tokenizer: Any, n: int) -> list[str]:
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]} "
                                            f"(story {i}). Use at least five paragraphs."}]
        out.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    return out


def make_adapters(base_dir: Path, ws: Any, out: Path, count: int) -> list[tuple[str, Path]]:
    """``count`` random-init LoRA adapter directories with a valid tuneforge.json for the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models import load_contract, load_tokenizer, resolve_model
    from tuneforge.train._artifacts import META, checksum, file_digests

    resolved = resolve_model(BASE, ws)
    tokenizer = load_tokenizer(resolved)
    contract = load_contract(resolved, tokenizer).to_dict()
    made = []
    for i in range(count):
        target = out / f"bench-{i}"
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), LoraConfig(
            r=16, lora_alpha=16, init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        with torch.no_grad():  # small random B so the output stays fluent and long
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.01)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        digests = file_digests(target)
        meta = {"kind": "adapter", "name": target.name,
                "base_model": {"ref": resolved.ref, "name": resolved.name, "identity": resolved.identity},
                "contract": contract, "files": digests, "checksum": checksum(digests)}
        (target / META).write_text(json.dumps(meta))
        made.append((f"bench-{i}@1", target))
    return made


def alone(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a thread that ends when it returns.

    libgomp keeps an OpenMP thread pool for every thread that ran a parallel region, for as long as
    that thread lives; with more pooled threads than cores it stops spinning between regions, and a
    batch-1 decode step (hundreds of small regions) measured a third slower on 2 cores, whichever
    thread ran it. Torch work done here on a thread that then ends takes its pool with it, so the
    baseline and the engine are each measured with only their own pool alive.
    """
    import threading

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name=getattr(fn, "__name__", "bench"))
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


# -- systems ------------------------------------------------------------------------------------


Timed = tuple[float, float, int]  # one request: time to first token, end to end, completion tokens


async def closed_loop(system: str, prompts: list[str], adapters: list[str | None], concurrency: int,
                      one: Callable[[int, str, str | None], Awaitable[Timed]]) -> Measurement:
    """``concurrency`` clients, each sending its next prompt when the last one ends; ``one`` sends
    prompt ``i`` (round-robin over ``adapters``) and times it."""
    queue = list(enumerate(prompts))
    timed: list[Timed] = []

    async def client() -> None:
        while queue:
            i, prompt = queue.pop(0)
            timed.append(await one(i, prompt, adapters[i % len(adapters)]))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return measurement(system, len({a for a in adapters if a}), concurrency, [t[0] for t in timed],
                       [t[1] for t in timed], sum(t[2] for t in timed), time.perf_counter() - started)


async def drive_engine(engine: Any, system: str, prompts: list[str], adapters: list[str | None], concurrency: int,
                       max_tokens: int) -> Measurement:
    """Closed loop straight on an engine (no HTTP)."""
    from tuneforge.serve.engines.base import GenerationRequest, SamplingParams

    async def one(i: int, prompt: str, adapter: str | None) -> Timed:
        request = GenerationRequest(f"b{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                                    adapter=adapter)
        start = time.perf_counter()
        first = None
        tokens = 0
        async for ev in engine.generate(request):
            if first is None:
                first = time.perf_counter() - start
            if ev.finish_reason is not None:
                tokens += ev.completion_tokens
        return first or 0.0, time.perf_counter() - start, tokens

    return await closed_loop(system, prompts, adapters, concurrency, one)


def hf_sequential(base_dir: Path, adapter_dirs: list[tuple[str, Path]], prompts: list[str], adapters: list[str | None],
                  max_tokens: int, dtype: str) -> Measurement:
    """The naive baseline: one request at a time through ``model.generate``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models import pick_dtype

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=pick_dtype(dtype)).eval()
    if adapter_dirs:
        from peft import PeftModel

        first, *rest = adapter_dirs
        model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0], autocast_adapter_dtype=False)
        for name, path in rest:
            model.load_adapter(path, adapter_name=name, autocast_adapter_dtype=False)
        model.eval()
    ttft: list[float] = []
    e2e: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        adapter = adapters[i % len(adapters)]
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        t0 = time.perf_counter()
        with torch.inference_mode():
            if adapter is not None:
                model.set_adapter(adapter)
            out = model.generate(input_ids=ids, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        e2e.append(time.perf_counter() - t0)
        ttft.append(e2e[-1])  # generate returns the whole answer at once
        tokens += out.shape[1] - ids.shape[1]
    return measurement("hf-sequential", len({a for a in adapters if a}), 1, ttft, e2e, tokens,
                       time.perf_counter() - started)


Runner = Callable[..., Awaitable[Measurement]]
# Extra systems measured on the same prompts: name -> async fn(prompts, adapter names, concurrency,
# max_tokens) -> Measurement. The lead adds "vllm-cpu" and "gateway" (OpenAI client on a URL) here.
RUNNERS: dict[str, Runner] = {}


# -- vLLM columns (--vllm): our gateway over the vllm engine, and vLLM's own server alone ------------


async def timed_stream(client: Any, model: str, prompt: str, max_tokens: int) -> Timed:
    """One streamed completion: (time to first token, end to end, completion tokens)."""
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                             stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens += chunk.usage.completion_tokens
    return first or 0.0, time.perf_counter() - start, tokens


def http_client(url: str, api_key: str) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=600)


async def drive_http(url: str, api_key: str, system: str, prompts: list[str], adapters: list[str | None],
                     concurrency: int, max_tokens: int, base_name: str) -> Measurement:
    """Closed loop over HTTP with the openai SDK: streamed completions of the already-rendered prompts,
    so the gateway and vLLM alone do the same work."""
    client = http_client(url, api_key)

    async def one(i: int, prompt: str, adapter: str | None) -> Timed:
        return await timed_stream(client, adapter or base_name, prompt, max_tokens)

    try:
        return await closed_loop(system, prompts, adapters, concurrency, one)
    finally:
        await client.close()


def start_gateway(made: list[tuple[str, Path]], tmp: Path, stack: Any) -> tuple[str, str, str, str]:
    """``tuneforge serve --engine vllm`` in its own process, as deployed (a gateway thread inside this
    process would share the GIL with the clients and inflate its latency). Returns the gateway URL,
    the URL of the vLLM server it manages, the API key and the base model's served name."""
    import subprocess

    import httpx
    import yaml

    from tuneforge.serve.server import free_port

    gateway_port, vllm_port = free_port(), free_port()
    config = tmp / "bench-gateway.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base": BASE},
        "serve": {"engine": "vllm", "request_log": {"enabled": False}, "max_concurrent_requests": 256,
                  "adapters": {name.split("@")[0]: str(path) for name, path in made},  # served as NAME@1
                  "vllm": {"port": vllm_port, "max_num_seqs": 16}},
    }))
    key = "sk-bench"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("tuneforge")), "serve", "--config", str(config),
                             "--port", str(gateway_port)],
                            env={**os.environ, "TUNEFORGE_API_KEY": key}, stdout=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait(120)))
    url = f"http://127.0.0.1:{gateway_port}"
    deadline = time.monotonic() + 900
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode} during startup (see .tuneforge/serve/vllm.log)")
        with contextlib.suppress(httpx.HTTPError):
            ready = httpx.get(url + "/readyz", timeout=5)
            if ready.status_code == 200:
                return url, f"http://127.0.0.1:{vllm_port}", key, ready.json()["models"][0]
        if time.monotonic() > deadline:
            raise SystemExit("the gateway did not become ready within 900 s")
        time.sleep(1)


def vllm_runners(made: list[tuple[str, Path]], tmp: Path, stack: Any) -> tuple[dict[str, Runner], Any]:
    """Two runners over one ``tuneforge serve --engine vllm`` process: through the gateway
    ("gateway-vllm") and straight to the vLLM server it manages ("vllm-alone"), plus the paired
    gateway-overhead measurement."""
    url, vllm_url, key, base_name = start_gateway(made, tmp, stack)

    async def through_gateway(prompts: list[str], names: list[str | None], c: int, max_tokens: int) -> Measurement:
        await drive_http(url, key, "warmup", prompts[:c], names, c, 4, base_name)  # loads the adapters
        m = await drive_http(url, key, "gateway-vllm", prompts, names, c, max_tokens, base_name)
        print(m, file=sys.stderr)
        return m

    async def vllm_alone(prompts: list[str], names: list[str | None], c: int, max_tokens: int) -> Measurement:
        m = await drive_http(vllm_url, "unused", "vllm-alone", prompts, names, c, max_tokens, base_name)
        print(m, file=sys.stderr)
        return m

    async def overhead(prompts: list[str], max_tokens: int) -> dict[str, Any]:
        return await gateway_overhead(url, vllm_url, key, base_name, prompts, max_tokens)

    return {"gateway-vllm": through_gateway, "vllm-alone": vllm_alone}, overhead


async def gateway_overhead(url: str, vllm_url: str, key: str, base_name: str, prompts: list[str],
                           max_tokens: int) -> dict[str, Any]:
    """What the gateway adds, one request at a time: each prompt goes through the gateway and straight
    to vLLM back to back (the order alternating, each over a kept-alive connection), and the
    per-pair differences are summarised, so slow drifts of the machine cancel out."""
    gateway, alone = http_client(url, key), http_client(vllm_url, "unused")
    for client in (gateway, alone):  # connections open and the first-request paths warm
        await timed_stream(client, base_name, prompts[0], 4)
    pairs = []
    for i, prompt in enumerate(prompts):
        if i % 2:
            through = await timed_stream(gateway, base_name, prompt, max_tokens)
            direct = await timed_stream(alone, base_name, prompt, max_tokens)
        else:
            direct = await timed_stream(alone, base_name, prompt, max_tokens)
            through = await timed_stream(gateway, base_name, prompt, max_tokens)
        pairs.append((through, direct))
    await gateway.close()
    await alone.close()
    result = {"requests": len(pairs), "max_tokens": max_tokens, "concurrency": 1,
              "ttft_added_ms_p50": round(statistics.median(1000 * (g[0] - a[0]) for g, a in pairs), 2),
              "e2e_added_ms_p50": round(statistics.median(1000 * (g[1] - a[1]) for g, a in pairs), 2),
              "gateway_ttft_ms_p50": round(statistics.median(1000 * g[0] for g, _ in pairs), 1),
              "vllm_alone_ttft_ms_p50": round(statistics.median(1000 * a[0] for _, a in pairs), 1)}
    print("gateway overhead", result, file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--adapters", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=0, help="requests per point (default 2x concurrency, min 8)")
    parser.add_argument("--baseline-requests", type=int, default=6)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default); 1 avoids OpenMP spin contention on a busy machine")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--vllm", action="store_true",
                        help="also measure the gateway over the vllm engine and vLLM alone (needs `make vllm-env`)")
    parser.add_argument("--overhead-requests", type=int, default=40,
                        help="paired requests for the gateway-overhead measurement (with --vllm)")
    parser.add_argument("--overhead-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_serve.json")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch starts, so every thread gets it
        import torch

        torch.set_num_threads(args.threads)
    results, overhead = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "base": BASE,
              "max_tokens": args.max_tokens, "dtype": args.dtype, "threads": args.threads or None, "results": [asdict(r) for r in results],
              "gateway_overhead": overhead}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


async def run(args: argparse.Namespace) -> tuple[list[Measurement], dict[str, Any] | None]:
    """Each system alone on the machine, one after the other: the HF baseline, the local engine, then
    the other runners (vLLM's server processes start only once the local engine has stopped)."""
    from tuneforge.models import load_tokenizer, resolve_model
    from tuneforge.serve.engines.base import AdapterSpec
    from tuneforge.serve.engines.local import LocalEngine
    from tuneforge.workspace import Workspace

    ws = Workspace.from_env()
    resolved = resolve_model(BASE, ws)
    tokenizer = load_tokenizer(resolved)
    results: list[Measurement] = []
    overhead = None

    def keep(m: Measurement) -> None:
        results.append(m)
        print(m, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, contextlib.ExitStack() as stack:
        made = alone(make_adapters, resolved.path, ws, Path(tmp), max(args.adapters))

        def names_for(k: int) -> list[str | None]:  # the adapters a point sends to, round-robin; [None]: the base
            return [n for n, _ in made[:k]] or [None]

        points = [(names_for(k), c) for k in args.adapters for c in args.concurrency]

        def prompts_for(c: int) -> list[str]:
            return chat_prompts(tokenizer, args.requests or max(8, 2 * c))

        for k in [] if args.no_baseline else args.adapters:
            keep(alone(hf_sequential, resolved.path, made[:k], chat_prompts(tokenizer, args.baseline_requests),
                       names_for(k), args.max_tokens, args.dtype))
        engine = LocalEngine(BASE, workspace=ws, dtype=args.dtype, max_batch=args.max_batch,
                             max_loaded_adapters=max(1, max(args.adapters)))
        await engine.start()
        loaded: set[str] = set()
        for k in args.adapters:
            # Only the point's adapters are resident, as in a deployment serving them: with none, the
            # base runs without LoRA layers at all.
            for name in sorted(loaded - {n for n, _ in made[:k]}):
                await engine.unload_adapter(name)
                loaded.discard(name)
            for name, path in made[:k]:
                if name not in loaded:
                    await engine.load_adapter(AdapterSpec(name, path))
                    loaded.add(name)
            for c in args.concurrency:
                prompts = prompts_for(c)
                await drive_engine(engine, "warmup", prompts[:c], names_for(k), c, 4)
                keep(await drive_engine(engine, "local", prompts, names_for(k), c, args.max_tokens))
        await engine.stop()
        runners = dict(RUNNERS)
        if args.vllm:
            vllm, measure_overhead = vllm_runners(made, Path(tmp), stack)
            runners.update(vllm)
            overhead = await measure_overhead(chat_prompts(tokenizer, args.overhead_requests), args.overhead_tokens)
        for runner in runners.values():
            for names, c in points:
                results.append(await runner(prompts_for(c), names, c, args.max_tokens))
    return results, overhead


if __name__ == "__main__":
    main()
