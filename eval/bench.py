"""Decode speed, memory against trajectory length, and 1,000-digit additions solved per second.

    python -m mamba_agent.eval.bench --device cpu  --out eval/results/DATE-bench-cpu
    python -m mamba_agent.eval.bench --device cuda --out eval/results/DATE-bench-h200

Models: mamba-shipped and transformer-shipped, the addition checkpoints, and mamba-130m and
transformer-130m, the paper's 130M
configuration of each (Mamba-1 24 x 768; Pythia-style Transformer 24 x 768, 8 heads) with random
weights: speed and memory do not depend on the values. Every run decodes through the runtime's
decoders (`policy.decoder`): on the CPU Mamba's NumPy step, on CUDA a CUDA graph of the kernel
step; the Transformer decodes eagerly (its cache grows, so a static graph does not fit it).

Each figure stands beside its hardware limit: the bytes a step must move (weights once per
step, the state read and written, the KV cache read) over the memory bandwidth, and its flops
(2 per weight per row) over the peak; the limit is the larger time. The CPU's bandwidth and
peak are measured here (a large copy, a large matmul on the threads in use); the H200's are its
datasheet figures (4.8 TB/s HBM3e; 67 TFLOP/s fp32, which these fp32 models use).

Writes `bench.jsonl` (one record per measurement, appended as it finishes) and `bench.md`.
"""

import argparse
import gc
import json
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.episode import FINISHED
from mamba_agent.policies import MambaConfig, TransformerConfig, build_policy
from mamba_agent.runtime import run_episodes
from mamba_agent.tasks import get_task
from mamba_agent.vocab import VOCAB_SIZE

H200 = {"bandwidth": 4.8e12, "flops": 67e12, "name": "NVIDIA H200 (datasheet)"}
MODELS = {
    "mamba-shipped": lambda: load_checkpoint("builtin:addition-mamba")[0],
    "transformer-shipped": lambda: load_checkpoint("builtin:addition-transformer")[0],
    "mamba-130m": lambda: build_policy(MambaConfig(vocab_size=VOCAB_SIZE, d_model=768, n_layer=24)),
    "transformer-130m": lambda: build_policy(
        TransformerConfig(vocab_size=VOCAB_SIZE, d_model=768, n_layer=24, n_head=8)
    ),
}


def cpu_limits(threads: int) -> dict:
    """Measured: copy bandwidth of 256 MiB arrays, fp32 matmul flops, on `threads` threads."""
    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = time.perf_counter()
    for _ in range(5):
        np.copyto(b, a)
    bandwidth = 5 * 2 * a.nbytes / (time.perf_counter() - t)  # read + write
    m = torch.randn(2048, 2048)
    m @ m
    t = time.perf_counter()
    for _ in range(5):
        m @ m
    flops = 5 * 2 * 2048**3 / (time.perf_counter() - t)
    return {"bandwidth": bandwidth, "flops": flops, "name": f"{platform.processor() or platform.machine()}, {threads} thread(s), measured"}


def weight_bytes(policy) -> int:
    return sum(p.numel() * p.element_size() for p in policy.parameters())


def kv_fill(decoder, length: int) -> None:
    """Give a Transformer's cache `length` tokens of random keys and values: the cost and memory
    of the next steps depend on the length only, and a real 1M-token prefix takes hours."""
    policy, cache = decoder.policy, decoder.state
    policy._reserve(cache, length + 64)
    cache.kv[..., :length, :].normal_()
    cache.length = length


def reach(decoder, length: int) -> None:
    """Bring the decoder's rows to `length` tokens of history (Mamba: a real chunked prefill)."""
    if hasattr(decoder.state, "kv"):
        kv_fill(decoder, length)
        return
    chunk = max(64, min(4096, 2**16 // decoder.batch_size))  # bounds the token lists made here
    g = torch.Generator().manual_seed(0)
    for start in range(0, length, chunk):
        n = min(chunk, length - start)
        decoder.prefill(torch.randint(0, 256, (decoder.batch_size, n), generator=g).tolist())
    if decoder.device.type == "cuda":
        torch.cuda.empty_cache()


def time_steps(decoder, device, seconds: float = 1.5, windows: int = 5) -> tuple[float, int]:
    """Seconds per step of `decoder.step_greedy` (the runtime's loop without tools): the median
    of `windows` timed windows (a busy neighbour on a shared machine moves one window, not the
    figure), each at least seconds / windows long and 3 steps."""
    tokens = [65] * decoder.batch_size
    for _ in range(5):  # warm-up: graph capture, allocator
        tokens = decoder.step_greedy(tokens)
    per_step, total = [], 0
    for _ in range(windows):
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds / windows:
            tokens = decoder.step_greedy(tokens)
            n += 1
        per_step.append((time.perf_counter() - start) / n)
        total += n
    return sorted(per_step)[windows // 2], total


def limit_seconds(policy, state_bytes_per_row: float, batch: int, hw: dict) -> float:
    moved = weight_bytes(policy) + batch * state_bytes_per_row
    flops = 2 * policy.num_parameters() * batch
    return max(moved / hw["bandwidth"], flops / hw["flops"])


def state_traffic(decoder) -> float:
    """Bytes per row a step reads and writes of the state: Mamba and RNNs read and write all of
    it; a KV cache is read up to its length and one token written."""
    state = decoder.state
    if hasattr(state, "kv"):
        per_token = state.kv[:, :, 0, :, 0, :].numel() * state.kv.element_size()
        return per_token * (state.length + 1)
    return 2 * decoder.policy.state_nbytes(state) / decoder.batch_size


def bench_decode(name, policy, device, batches, context, hw, emit):
    for batch in batches:
        try:
            decoder = policy.decoder(batch, device)
            reach(decoder, context)
            sec, n = time_steps(decoder, device)
        except torch.OutOfMemoryError:
            emit({"kind": "decode", "model": name, "batch": batch, "error": "out of memory"})
            continue
        limit = limit_seconds(policy, state_traffic(decoder), batch, hw)
        emit({
            "kind": "decode", "model": name, "parameters": policy.num_parameters(), "batch": batch,
            "context": context, "steps_timed": n, "ms_per_step": 1e3 * sec, "tokens_per_s": batch / sec,
            "limit_ms_per_step": 1e3 * limit, "fraction_of_limit": limit / sec,
            "decoder": type(decoder).__name__,
        })
        del decoder
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def bench_memory(name, policy, device, lengths, emit):
    """Memory while decoding after `length` tokens of history: the state's size, and the peak
    above what was allocated before the decoder was made (weights; on the CPU, process RSS)."""
    for length in lengths:
        decoder = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        try:
            decoder = policy.decoder(1, device)
            reach(decoder, length)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec, n = time_steps(decoder, device, seconds=0.5)
            peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else rss_mib() * 2**20
            emit({
                "kind": "memory", "model": name, "tokens": length, "state_bytes": decoder.policy.state_nbytes(decoder.state),
                "peak_bytes": peak, "peak_is": "allocated while decoding, beyond the weights" if device.type == "cuda" else "process RSS",
                "ms_per_step": 1e3 * sec,
            })
        except torch.OutOfMemoryError:
            emit({"kind": "memory", "model": name, "tokens": length, "error": "out of memory"})
        del decoder


def bench_additions(device, batch, count, digits, emit):
    """1,000-digit additions solved per second by the shipped Mamba, tools in the loop."""
    policy = MODELS["mamba-shipped"]().to(device)
    task = get_task("addition")
    problems = [task.random_problem(random.Random(i), digits) for i in range(count)]
    episodes = [task.episode(p) for p in problems]
    start = time.perf_counter()
    run_episodes(policy, episodes, batch_size=batch, device=device)
    seconds = time.perf_counter() - start
    correct = sum(ep.exit == FINISHED and task.check(p, ep.answer) for p, ep in zip(problems, episodes))
    tokens = sum(ep.n_tokens for ep in episodes)
    emit({
        "kind": "additions", "digits": digits, "batch": batch, "episodes": count, "correct": correct,
        "seconds": seconds, "additions_per_s": count / seconds, "tokens_per_s": tokens / seconds,
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="folder for bench.jsonl and bench.md")
    ap.add_argument("--batches", default=None, help="comma-separated (default: 1,64 on CPU; 1,64,1024 on CUDA)")
    ap.add_argument("--context", type=int, default=1000, help="tokens of history before timing decode")
    ap.add_argument("--lengths", default="1000,10000,100000,1000000")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated names from: " + "; ".join(MODELS))
    ap.add_argument("--additions", type=int, default=None, help="how many 1,000-digit additions to time (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    hw = H200 if device.type == "cuda" else cpu_limits(args.threads)
    batches = [int(b) for b in (args.batches or ("1,64,1024" if device.type == "cuda" else "1,64")).split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit or "unknown", "device": str(device),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else hw["name"],
        "torch": torch.__version__, "threads": args.threads, "hardware_limit": hw,
    }
    records = []

    def emit(record: dict) -> None:
        record = {**record, **{k: meta[k] for k in ("date", "commit", "machine")}}
        records.append(record)
        with open(out / "bench.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    for name in args.models.split(","):
        policy = MODELS[name]().to(device).eval()  # outside inference mode: its weights stay normal tensors
        with torch.inference_mode():
            bench_decode(name, policy, device, batches, args.context, hw, emit)
            bench_memory(name, policy, device, [int(n) for n in args.lengths.split(",")], emit)
        del policy
    additions = args.additions if args.additions is not None else (1024 if device.type == "cuda" else 0)
    if additions:
        bench_additions(device, min(additions, max(batches)), additions, 1000, emit)
    (out / "bench.md").write_text(report(meta, records))


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:,.{digits}g}" if x < 1000 else f"{x:,.0f}"


def report(meta: dict, records: list[dict]) -> str:
    hw = meta["hardware_limit"]
    lines = [
        f"# Decode benchmark: {meta['machine']} ({meta['device']}), {meta['date']}, commit {meta['commit']}",
        "",
        f"torch {meta['torch']}, {meta['threads']} CPU thread(s). Limit: bytes moved per step over "
        f"{hw['bandwidth'] / 1e9:,.0f} GB/s, or flops over {hw['flops'] / 1e12:,.2f} TFLOP/s, whichever is longer "
        f"({hw['name']}).",
        "",
        "## Decode step (greedy sampling included, no tools)",
        "| model | params | batch | context | decoder | ms/step | tokens/s | limit ms/step | % of limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["kind"] == "decode" and "error" not in r:
            lines.append(
                f"| {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['batch']} | {r['context']:,} | {r['decoder']} | "
                f"{fmt(r['ms_per_step'])} | {fmt(r['tokens_per_s'])} | {fmt(r['limit_ms_per_step'])} | "
                f"{100 * r['fraction_of_limit']:.1f}% |"
            )
        elif r["kind"] == "decode":
            lines.append(f"| {r['model']} | | {r['batch']} | | | {r['error']} | | | |")
    lines += ["", "## Memory against trajectory length (batch 1)",
              "| model | tokens | state | peak | ms/step |", "|---|---|---|---|---|"]
    for r in records:
        if r["kind"] == "memory":
            if "error" in r:
                lines.append(f"| {r['model']} | {r['tokens']:,} | {r['error']} | | |")
            else:
                lines.append(
                    f"| {r['model']} | {r['tokens']:,} | {r['state_bytes'] / 2**20:,.2f} MiB | "
                    f"{r['peak_bytes'] / 2**20:,.1f} MiB ({r['peak_is']}) | {fmt(r['ms_per_step'])} |"
                )
    adds = [r for r in records if r["kind"] == "additions"]
    if adds:
        lines += ["", "## 1,000-digit additions with the pointer tool (shipped Mamba)",
                  "| batch | episodes | correct | seconds | additions/s | tokens/s |", "|---|---|---|---|---|---|"]
        for r in adds:
            lines.append(f"| {r['batch']} | {r['episodes']} | {r['correct']} | {r['seconds']:.1f} | "
                         f"{r['additions_per_s']:.2f} | {fmt(r['tokens_per_s'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
