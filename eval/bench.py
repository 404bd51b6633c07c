"""Decode speed, memory against trajectory length, and 1,000-digit additions solved per second.

    python -m mamba_agent.eval.bench --device cpu  --out eval/results/DATE-bench-cpu
    python -m mamba_agent.eval.bench --device cuda --out eval/results/DATE-bench-h200

Models: mamba-shipped and transformer-shipped, the addition checkpoints; mamba2-shipped-size, a
Mamba-2 of the shipped Mamba's size (its default config, random weights); and mamba-130m and
transformer-130m, the paper's 130M
configuration of each (Mamba-1 24 x 768; Pythia-style Transformer 24 x 768, 8 heads) with random
weights: speed and memory do not depend on the values. Every run decodes through the runtime
(mamba_agent/runtime.py) and the stepper it picks: a step is `EpisodeRows`'s read of one token a
row (on the CPU Mamba's NumPy step, on CUDA one CUDA graph of the copy in, the fused step and the
copy out; the Transformer eagerly: its cache grows, so a static graph does not fit it), and
the additions run through `run_episodes` (on CUDA the tools as tensors). The split step's tiles
are timed alone (`--split-sweep`); whole evaluations on the GPU run through `mamba-agent eval`
(eval/gpu_runtime.sh).

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
import time
from pathlib import Path

import numpy as np
import torch

from mamba_agent.checkpoint import load_checkpoint, resolve
from mamba_agent.episode import FINISHED
from mamba_agent.policies import Mamba2Config, MambaConfig, TransformerConfig, build_policy
from mamba_agent.provenance import commit, file_sha256
from mamba_agent.runtime import EpisodeRows, Sampler, plan, run_episodes
from mamba_agent.steppers import choose_step, make_stepper
from mamba_agent.tasks import get_task
from mamba_agent.vocab import VOCAB_SIZE

H200 = {"bandwidth": 4.8e12, "flops": 67e12, "name": "NVIDIA H200 (datasheet)"}
SHIPPED = {"mamba-shipped": "builtin:addition-mamba", "transformer-shipped": "builtin:addition-transformer"}
MODELS = {
    "mamba-shipped": lambda: load_checkpoint(SHIPPED["mamba-shipped"])[0],
    "transformer-shipped": lambda: load_checkpoint(SHIPPED["transformer-shipped"])[0],
    "mamba2-shipped-size": lambda: build_policy(Mamba2Config(vocab_size=VOCAB_SIZE)),
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


def kv_fill(stepper, length: int) -> None:
    """Give a Transformer's cache `length` tokens of random keys and values: the cost and memory
    of the next steps depend on the length only, and a real 1M-token prefix takes hours."""
    policy, cache = stepper.policy, stepper.state
    policy._reserve(cache, length + 64)
    cache.kv[..., :length, :].normal_()
    cache.length = length


def reach(stepper, length: int) -> None:
    """Bring the stepper's rows to `length` tokens of history (Mamba: a real chunked prefill)."""
    if hasattr(stepper.state, "kv"):
        kv_fill(stepper, length)
        return
    chunk = max(64, min(4096, 2**16 // stepper.batch_size))
    g = torch.Generator().manual_seed(0)
    for start in range(0, length, chunk):
        n = min(chunk, length - start)
        stepper.prefill(torch.randint(0, 256, (stepper.batch_size, n), generator=g).to(stepper.device))
    if stepper.device.type == "cuda":
        torch.cuda.empty_cache()


def decoding(policy, batch: int, device) -> EpisodeRows:
    """The runtime's rows (tools in Python, none here) and stepper, as `run_episodes` picks them."""
    return EpisodeRows(make_stepper(choose_step(policy, device, tensor_rows=False), policy, batch, device), [],
                       Sampler())


def time_steps(rows: EpisodeRows, seconds: float = 1.5, windows: int = 5) -> tuple[float, int]:
    """Seconds per step of the runtime's read of a token a row (its loop without tools): the
    median of `windows` timed windows (a busy neighbour on a shared machine moves one window,
    not the figure), each at least seconds / windows long and 3 steps."""
    tokens = [65] * rows.B
    for _ in range(5):  # warm-up: allocator, caches
        tokens = rows._read(tokens)
    per_step, total = [], 0
    for _ in range(windows):
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds / windows:
            tokens = rows._read(tokens)
            n += 1
        per_step.append((time.perf_counter() - start) / n)
        total += n
    return sorted(per_step)[windows // 2], total


def limit_seconds(policy, state_bytes_per_row: float, batch: int, hw: dict) -> float:
    moved = weight_bytes(policy) + batch * state_bytes_per_row
    flops = 2 * policy.num_parameters() * batch
    return max(moved / hw["bandwidth"], flops / hw["flops"])


def state_traffic(stepper) -> float:
    """Bytes per row a step reads and writes of the state: Mamba and RNNs read and write all of
    it; a KV cache is read up to its length and one token written."""
    state = stepper.state
    if hasattr(state, "kv"):
        per_token = state.kv[:, :, 0, :, 0, :].numel() * state.kv.element_size()
        return per_token * (state.length + 1)
    return 2 * stepper.policy.state_nbytes(state) / stepper.batch_size


def bench_decode(name, policy, device, batches, context, hw, emit):
    for batch in batches:
        try:
            rows = decoding(policy, batch, device)
            reach(rows.stepper, context)
            sec, n = time_steps(rows)
        except torch.OutOfMemoryError:
            emit({"kind": "decode", "model": name, "batch": batch, "error": "out of memory"})
            continue
        limit = limit_seconds(policy, state_traffic(rows.stepper), batch, hw)
        emit({
            "kind": "decode", "model": name, "parameters": policy.num_parameters(), "batch": batch,
            "context": context, "steps_timed": n, "ms_per_step": 1e3 * sec, "tokens_per_s": batch / sec,
            "limit_ms_per_step": 1e3 * limit, "fraction_of_limit": limit / sec, "decoder": rows.stepper.name,
        })
        del rows
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
            decoder = decoding(policy, 1, device)
            reach(decoder.stepper, length)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec, n = time_steps(decoder, seconds=0.5)
            peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else rss_mib() * 2**20
            emit({
                "kind": "memory", "model": name, "tokens": length, "state_bytes": policy.state_nbytes(decoder.stepper.state),
                "peak_bytes": peak, "peak_is": "allocated while decoding, beyond the weights" if device.type == "cuda" else "process RSS",
                "ms_per_step": 1e3 * sec,
            })
        except torch.OutOfMemoryError:
            emit({"kind": "memory", "model": name, "tokens": length, "error": "out of memory"})
        del decoder


def bench_additions(device, batch, count, digits, emit):
    """1,000-digit additions solved per second by the shipped Mamba through `run_episodes`, as
    the runtime holds them (on CUDA the tools as tensors) and steps."""
    policy = MODELS["mamba-shipped"]().to(device)
    task = get_task("addition")
    problems = [task.random_problem(random.Random(i), digits) for i in range(count)]
    episodes = [task.episode(p) for p in problems]
    rows, step = plan(policy, episodes[0], device, 0.0)
    start = time.perf_counter()
    run_episodes(policy, episodes, batch_size=batch, device=device, rows=rows, step=step)
    seconds = time.perf_counter() - start
    correct = sum(ep.exit == FINISHED and task.check(p, ep.answer) for p, ep in zip(problems, episodes))
    tokens = sum(ep.n_tokens for ep in episodes)
    emit({
        "kind": "additions", "digits": digits, "batch": batch, "episodes": count, "correct": correct,
        "seconds": seconds, "additions_per_s": count / seconds, "tokens_per_s": tokens / seconds,
        "rows": rows, "step": step,
    })


# SplitStepKernel: its matmul kernels' tiles (rows, _in_conv's channels, warps) with the SSM
# kernel's at its defaults, then the SSM kernel's (channels, warps) with the matmuls' at theirs,
# then the two together where each was fastest, then the SSM update in fp32. The ranges are those
# that compile without spilling for the H200 (registers counted offline); (64, 32, 8) was the
# fastest matmul tile in every sweep of 2026-11-29 until the SSM update of an 8-bit state became
# fp16; since, (128, 32, 8) is, a token a step (by 2%).
SPLIT_TILE_GRID = (
    [dict(block_m=m, block_c=c, num_warps=w) for m, c, w in ((32, 32, 4), (64, 32, 8), (64, 64, 8), (128, 32, 8))]
    + [dict(ssm_block_c=c, ssm_warps=w) for c, w in ((64, 1), (128, 1), (128, 2), (256, 4), (256, 8))]
    + [dict(block_m=128, block_c=32, num_warps=8, ssm_block_c=c, ssm_warps=w) for c, w in ((128, 1), (256, 4))]
    + [dict(ssm_math="float32")])  # (the default for an 8-bit state: fp16)


# As the kernel names them.
TILE_NAMES = ("block_m", "block_c", "num_warps", "ssm_block_c", "ssm_warps", "ssm_math")


def bench_step_tiles(policy, device, batch: int, state_dtype: torch.dtype, emit) -> None:
    """The split step alone (greedy ids out, no tools) at each tile shape of SPLIT_TILE_GRID (bf16
    matmuls, as `--state-dtype` below fp32 runs it), a token a step and in pairs, every row reading
    2 tokens, and every row 1: 20 steps in a CUDA graph, median of 5 replays; then where the
    fastest's time goes, kernel by kernel. The stepper's defaults came from these sweeps."""
    from mamba_agent.policies.mamba_split_kernel import SplitStepKernel  # Triton

    state = SplitStepKernel(policy).init_state(batch, device, state_dtype)  # the same layouts for every tile
    tokens = torch.full((2, batch), 48, dtype=torch.long, device=device)
    greedy = torch.zeros(batch, dtype=torch.int32, device=device)
    twos, ones = (torch.full((batch,), n, dtype=torch.int32, device=device) for n in (2, 1))
    state_bytes = state.conv[:, 0].nbytes + state.ssm[:, 0].nbytes

    def seconds(step) -> float:
        step()  # compiles
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(20):
                step()
        times = []
        for _ in range(5):
            torch.cuda.synchronize(device)
            t = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t) / 20)
        return sorted(times)[2]

    best = None  # the fastest in pairs (2 + 1 tokens)
    for tiles in SPLIT_TILE_GRID:
        try:
            kernel = SplitStepKernel(policy, weight_dtype="bfloat16", **tiles)
            sec = seconds(lambda: kernel.greedy(tokens[0], state, greedy))
            pairs = {f"ms_per_step_{n}_tokens": 1e3 * seconds(lambda: kernel.greedy_pair(tokens, n_feed, state, greedy))
                     for n, n_feed in ((2, twos), (1, ones))}
        except Exception as e:  # a tile too large for the registers or shared memory
            emit({"kind": "step_tiles", "batch": batch, **tiles, "error": repr(e)[:200]})
            continue
        used = {k: getattr(kernel, k) for k in TILE_NAMES}  # the defaults too
        emit({"kind": "step_tiles", "batch": batch, **used, **tiles, "weight_dtype": "bfloat16",
              "state_dtype": str(state_dtype).removeprefix("torch."), "ms_per_step": 1e3 * sec, **pairs,
              "state_bytes_per_row": state_bytes, "fraction_of_limit": 2 * state_bytes * batch / H200["bandwidth"] / sec})
        if best is None or sum(pairs.values()) < best[0]:
            best = (sum(pairs.values()), tiles, kernel)
    if best is None:
        return
    # Where the fastest step's time goes, kernel by kernel (CUPTI's timings, 20 steps outside a graph).
    for name, step in {"one token": lambda k: k.greedy(tokens[0], state, greedy),
                       "pairs, 2 tokens": lambda k: k.greedy_pair(tokens, twos, state, greedy)}.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                step(best[2])
            torch.cuda.synchronize(device)
        per_kernel = {e.key: e.device_time_total / 20 / 1e3 for e in prof.key_averages()}  # ms a step
        emit({"kind": "step_kernels", "batch": batch, **{k: getattr(best[2], k) for k in TILE_NAMES}, "read": name,
              "ms_per_step_by_kernel": per_kernel})


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
    ap.add_argument("--split-sweep", type=int, default=0, help="CUDA: time the split step's tile shapes at this "
                    "batch, for each of --split-dtypes")
    ap.add_argument("--split-dtypes", default="bfloat16", help="state dtypes for --split-sweep")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    hw = H200 if device.type == "cuda" else cpu_limits(args.threads)
    batches = [int(b) for b in (args.batches or ("1,64,1024" if device.type == "cuda" else "1,64")).split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(), "device": str(device),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else hw["name"],
        "torch": torch.__version__, "threads": args.threads, "hardware_limit": hw,
    }
    records = []

    shipped = {name: file_sha256(resolve(c) / "model.safetensors") for name, c in SHIPPED.items()}

    def emit(record: dict) -> None:
        # the shipped addition Mamba is what every record but a named model's decodes
        sha = shipped.get(record.get("model", "mamba-shipped"))
        record = {**record, **{k: meta[k] for k in ("date", "commit", "machine")}, "checkpoint_sha256": sha}
        records.append(record)
        with open(out / "bench.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    for name in filter(None, args.models.split(",")):
        policy = MODELS[name]().to(device).eval()  # outside inference mode: its weights stay normal tensors
        with torch.inference_mode():
            bench_decode(name, policy, device, batches, args.context, hw, emit)
            bench_memory(name, policy, device, [int(n) for n in args.lengths.split(",")], emit)
        del policy
    additions = args.additions if args.additions is not None else (1024 if device.type == "cuda" else 0)
    if additions:
        bench_additions(device, min(additions, max(batches)), additions, 1000, emit)
    if args.split_sweep:
        shipped = MODELS["mamba-shipped"]().to(device).eval()
        for dtype in args.split_dtypes.split(","):
            with torch.inference_mode():
                bench_step_tiles(shipped, device, args.split_sweep, getattr(torch, dtype), emit)
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
        lines += ["", "## 1,000-digit additions with the pointer tool (shipped Mamba, through run_episodes)",
                  "| batch | rows | step | episodes | correct | seconds | additions/s | tokens/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in adds:
            lines.append(f"| {r['batch']} | {r.get('rows', 'python')} | {r.get('step', '')} | {r['episodes']} | "
                         f"{r['correct']} | {r['seconds']:.1f} | {r['additions_per_s']:.2f} | {fmt(r['tokens_per_s'])} |")
    tiles = [r for r in records if r["kind"] == "step_tiles" and "error" not in r]
    if tiles:
        lines += ["", "## The split step alone, by tile shape (shipped Mamba, bf16 matmuls, greedy ids out, no tools)",
                  "| batch | state | rows/program | channels/block | warps | SSM channels, warps, update | ms/step | "
                  "% of limit | in pairs: ms/step, 2 tokens a row / 1 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(tiles, key=lambda r: (r["state_dtype"], r["ms_per_step"]))[:24]:
            ssm = f"{r['ssm_block_c']}, {r['ssm_warps']}, {r.get('ssm_math') or 'default'}"
            lines.append(f"| {r['batch']:,} | {r['state_dtype']} | {r['block_m']} | {r['block_c']} | {r['num_warps']} | "
                         f"{ssm} | {fmt(r['ms_per_step'])} | {100 * r['fraction_of_limit']:.1f}% | "
                         f"{fmt(r['ms_per_step_2_tokens'])} / {fmt(r['ms_per_step_1_tokens'])} |")
    for r in (r for r in records if r["kind"] == "step_kernels"):
        lines += ["", f"Where the fastest tiles' step goes at {r['batch']:,} rows, reading {r['read']} (ms a step, by "
                  "kernel): " + ", ".join(f"{name} {ms:.3f}" for name, ms in
                                          sorted(r["ms_per_step_by_kernel"].items(), key=lambda kv: -kv[1]))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
