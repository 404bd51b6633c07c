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
import itertools
import json
import platform
import random
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from mamba_agent.checkpoint import load_checkpoint, resolve
from mamba_agent.provenance import commit, file_sha256
from mamba_agent.episode import FINISHED
from mamba_agent.pointer_batch import PointerBatch
from mamba_agent.policies import MambaConfig, TransformerConfig, build_policy
from mamba_agent.runtime import run_episodes
from mamba_agent.tasks import get_task
from mamba_agent.vocab import BOS, VOCAB_SIZE, decode

H200 = {"bandwidth": 4.8e12, "flops": 67e12, "name": "NVIDIA H200 (datasheet)"}
SHIPPED = {"mamba-shipped": "builtin:addition-mamba", "transformer-shipped": "builtin:addition-transformer"}
MODELS = {
    "mamba-shipped": lambda: load_checkpoint(SHIPPED["mamba-shipped"])[0],
    "transformer-shipped": lambda: load_checkpoint(SHIPPED["transformer-shipped"])[0],
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


def addition_problems(rng: np.random.Generator, count: int, digits: int) -> tuple[list, list]:
    """`count` random `digits`-digit additions (first digits nonzero) as prompt and reference token
    arrays, in NumPy: a Python loop over 16,000 x 1,000 digits would take longer than solving them."""
    a, b = rng.integers(0, 10, (count, digits)), rng.integers(0, 10, (count, digits))
    a[:, 0], b[:, 0] = rng.integers(1, 10, count), rng.integers(1, 10, count)
    total, carry = np.empty((count, digits), np.int64), np.zeros(count, np.int64)
    for i in range(digits - 1, -1, -1):  # column addition, right to left
        carry, total[:, i] = np.divmod(a[:, i] + b[:, i] + carry, 10)
    zero = ord("0")
    prompts = np.concatenate([np.full((count, 1), BOS), a + zero, np.full((count, 1), ord("+")), b + zero,
                              np.full((count, 1), ord("="))], axis=1)
    references = [np.concatenate([[zero + 1], t + zero]) if c else t + zero for t, c in zip(total, carry)]
    return list(prompts), references


def addition_max_tokens(prompts: list, references: list, digits: int) -> int:
    """The task's token budget for additions of `digits` digits, after checking the first of
    `addition_problems` against the task's own problem."""
    task = get_task("addition")
    check = task.problem({"a": decode(prompts[0][1 : digits + 1]), "b": decode(prompts[0][digits + 2 : -1])})
    assert decode(references[0]) == check.reference, "addition_problems disagrees with the task"
    return task.max_tokens(check)


def bench_device_additions(policy, device, batch: int, digits: int, state_dtype: torch.dtype,
                           precision: str, steps_per_graph: int, emit, tiles: dict | None = None,
                           step_kind: str = "pairs") -> None:
    """1,000-digit additions solved per second with the tools on the GPU: `PointerBatch` (pointer
    memory and episode rules as tensors) and the Mamba step, `steps_per_graph` steps of both
    captured in one CUDA graph. `step_kind`: "pairs", SplitStepKernel reading a forced token (a
    prompt token, an observation) in the same step as the token before it (26,032 steps instead
    of 38,048; the fastest with a bf16 state; `tiles`: its options), "split", SplitStepKernel a
    token a step (the fastest with an fp8 state), "kernel", StepKernel (the step in one kernel;
    `tiles`: its options), or "fused", the runtime's FusedStep (6 kernels a layer, mamba-ssm's
    state update; fp32 state) and an argmax. Compiling and capturing (one graph's steps on the
    first problems) is not timed; the wave is, from loading its problems to the verdicts."""
    rng = np.random.default_rng(0)
    prompts, refs = addition_problems(rng, batch, digits)
    pb = PointerBatch(prompts, refs, n_pointers=3, max_tokens=addition_max_tokens(prompts, refs, digits), device=device)
    if step_kind in ("kernel", "split", "pairs"):
        from mamba_agent.policies.mamba_split_kernel import SplitStepKernel  # Triton
        from mamba_agent.policies.mamba_step_kernel import StepKernel

        make = StepKernel if step_kind == "kernel" else SplitStepKernel
        tiles = tiles or {"weight_dtype": "bfloat16"}  # without a sweep: the defaults, bf16 matmuls (the fastest)
        kernel, greedy = make(policy, precision=precision, **tiles), torch.zeros(batch, dtype=torch.int32, device=device)
        state = kernel.init_state(batch, device, state_dtype)  # in the kernel's layouts

        def model(tokens):
            return kernel.greedy(tokens, state, greedy).long()

        def model_pairs(feed, n_feed):
            return kernel.greedy_pair(feed, n_feed, state, greedy).long()
    else:
        from mamba_agent.policies.mamba import _kernels
        from mamba_agent.policies.mamba_cuda import FusedStep  # Triton, mamba-ssm

        fused = FusedStep(policy, _kernels().selective_state_update)
        state = policy.init_state(batch, device)  # fp32, as the caller checked

        def model(tokens):
            return fused(tokens, state).argmax(-1)
    # pb.advance is one Triton kernel on CUDA. (torch.compile of its PyTorch version, tried first,
    # functionalised the tape's in-place writes into a copy of the whole tape a step: 2.97 ms a
    # step at 4,096 rows on the H200, 2026-11-29, against 1.68 ms at 16,384 rows eager.)

    def steps() -> None:
        for _ in range(steps_per_graph):
            if step_kind == "pairs":
                pb.advance(model_pairs(pb.feed, pb.n_feed), pair=True)
            else:
                pb.advance(model(pb.tokens))

    t0 = time.perf_counter()
    run = steps  # on the CPU (a dry run in Triton's interpreter): no graph
    if device.type == "cuda":
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: Triton compiles
            steps()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            steps()
        run = graph.replay
    setup = time.perf_counter() - t0

    def wave() -> tuple[float, int]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, replays = time.perf_counter(), 0
        pb.load(prompts, refs)
        state.conv.zero_(), state.ssm.zero_()
        while not bool(pb.done.all()):  # one synchronisation per graph
            run()
            replays += 1
        return time.perf_counter() - start, replays

    prompts, refs = addition_problems(rng, batch, digits)  # new problems for the timed wave
    seconds, replays = wave()
    solved = int(pb.solved.sum())
    tokens = int(pb.n_tokens.sum())
    steps = replays * steps_per_graph
    emit({
        "kind": "device_additions", "digits": digits, "batch": batch, "episodes": batch, "correct": solved,
        "finished": int(pb.finished.sum()), "seconds": seconds, "additions_per_s": solved / seconds,
        "tokens_per_s": tokens / seconds, "steps": steps, "ms_per_step": 1e3 * seconds / steps,
        "state_dtype": str(state_dtype).removeprefix("torch."), "precision": precision, "step": step_kind,
        "steps_per_graph": steps_per_graph, "setup_s": setup, "tiles": tiles if step_kind != "fused" else "FusedStep",
        "state_bytes_per_row": (state.conv[:, 0].nbytes + state.ssm[:, 0].nbytes),
    })


# Rows a program, channels a block, warps, pipeline stages, weight dtype. On the H200 (2026-11-29)
# a wider grid (block_m 16/32/64, block_c 16/32/64, 2/4/8 warps, fp32 weights; see
# eval/results/2026-11-29-throughput-h200) put the fast shapes here; block_c 64 and block_m 64 with
# 3 stages do not fit in shared memory.
TILE_GRID = ((16,), (16, 32), (2, 4), (1, 2, 3), ("bfloat16",))


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


# As the kernels name them.
TILE_NAMES = ("block_m", "block_c", "num_warps", "num_stages", "ssm_block_c", "ssm_warps", "ssm_math")


def bench_step_tiles(policy, device, batch: int, state_dtype: torch.dtype, precision: str, emit,
                     grid=None, split: bool = False) -> tuple[dict | None, dict | None]:
    """The one-kernel step alone (greedy ids out, no tools) at each tile shape: rows per program,
    channels per block, warps, pipeline stages, weight dtype (`grid`: a list of StepKernel options;
    default TILE_GRID); `split`: SplitStepKernel instead, over SPLIT_TILE_GRID, each tile also
    reading pairs (`greedy_pair`) with every row reading 2 tokens, and every row 1. 20 steps in a
    CUDA graph, median of 5 replays. Returns the fastest tiles (for the split step: in pairs, 2 + 1
    tokens) and the fastest a token a step (None, None: nothing compiled)."""
    from mamba_agent.policies.mamba_split_kernel import SplitStepKernel  # Triton
    from mamba_agent.policies.mamba_step_kernel import StepKernel

    make = SplitStepKernel if split else StepKernel
    if split:
        grid = grid or [{**tiles, "weight_dtype": "bfloat16"} for tiles in SPLIT_TILE_GRID]

    state = make(policy).init_state(batch, device, state_dtype)  # the same layouts for every tile
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

    best = best_one = None  # the fastest by cost (the split step: pairs, 2 + 1 tokens), and a token a step
    keys = ("block_m", "block_c", "num_warps", "num_stages", "weight_dtype")
    for tiles in grid or [dict(zip(keys, t)) for t in itertools.product(*TILE_GRID)]:
        try:
            kernel = make(policy, precision=precision, **tiles)
            sec = seconds(lambda: kernel.greedy(tokens[0], state, greedy))
            pairs = {}
            if split:
                pairs = {f"ms_per_step_{n}_tokens": 1e3 * seconds(lambda: kernel.greedy_pair(tokens, n_feed, state, greedy))
                         for n, n_feed in ((2, twos), (1, ones))}
        except Exception as e:  # a tile too large for the registers or shared memory
            emit({"kind": "step_tiles", "batch": batch, **tiles, "split": split, "error": repr(e)[:200]})
            continue
        used = {k: getattr(kernel, k) for k in TILE_NAMES if hasattr(kernel, k)}  # the defaults too
        emit({"kind": "step_tiles", "batch": batch, **used, **tiles, "split": split,
              "state_dtype": str(state_dtype).removeprefix("torch."), "precision": precision,
              "ms_per_step": 1e3 * sec, **pairs, "state_bytes_per_row": state_bytes,
              "fraction_of_limit": 2 * state_bytes * batch / H200["bandwidth"] / sec})
        cost = sum(pairs.values()) if split else sec
        if best is None or cost < best[0]:
            best = (cost, tiles, kernel)
        if best_one is None or sec < best_one[0]:
            best_one = (sec, tiles)
    if best is None:
        return None, None
    # Where the fastest step's time goes, kernel by kernel (CUPTI's timings, 20 steps outside a graph).
    steps = {"one token": lambda k: k.greedy(tokens[0], state, greedy)}
    if split:
        steps["pairs, 2 tokens"] = lambda k: k.greedy_pair(tokens, twos, state, greedy)
    for name, step in steps.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                step(best[2])
            torch.cuda.synchronize(device)
        per_kernel = {e.key: e.device_time_total / 20 / 1e3 for e in prof.key_averages()}  # ms a step
        used = {k: getattr(best[2], k) for k in TILE_NAMES if hasattr(best[2], k)}
        emit({"kind": "step_kernels", "batch": batch, **used, **best[1], "split": split, "read": name,
              "ms_per_step_by_kernel": per_kernel})
    return best[1], best_one[1]


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
    ap.add_argument("--device-additions", default="", help="CUDA: 1,000-digit additions with the tools on the GPU, "
                    "one wave per BATCH[:STEP[:STATE_DTYPE]] (comma-separated); STEP pairs (SplitStepKernel reading a forced token "
                    "with the one before it, default), split (SplitStepKernel, a token a step), "
                    "kernel (StepKernel, the step in one kernel) or fused (FusedStep, fp32 state); STATE_DTYPE bfloat16 "
                    "(the Triton steps' default), float32, or float8_e4m3fn (split and pairs)")
    ap.add_argument("--state-dtypes", default="float32,bfloat16", help="Mamba state dtypes for --tile-sweep")
    ap.add_argument("--precision", default="tf32", help="the one-kernel step's matmuls: tf32 or ieee (fp32)")
    ap.add_argument("--steps-per-graph", type=int, default=128)
    ap.add_argument("--tile-sweep", type=int, default=0, help="CUDA: time the one-kernel step's tile shapes at this batch")
    ap.add_argument("--split-sweep", type=int, default=0, help="CUDA: time SplitStepKernel's tile shapes at this "
                    "batch, for each of --split-dtypes; the fastest are used for `split` and `pairs` additions "
                    "with that state dtype")
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
    shipped = (MODELS["mamba-shipped"]().to(device).eval()
               if args.tile_sweep or args.split_sweep or args.device_additions else None)
    best_tiles = {}  # state dtype -> the fastest tiles of the sweep
    for dtype in args.state_dtypes.split(",") if args.tile_sweep else []:
        with torch.inference_mode():
            best_tiles[dtype] = bench_step_tiles(shipped, device, args.tile_sweep, getattr(torch, dtype), args.precision,
                                                 emit)[0]
            for batch in (1, 64, 1024):  # the fastest tiles at the runtime's batch sizes
                bench_step_tiles(shipped, device, batch, getattr(torch, dtype), args.precision, emit, [best_tiles[dtype]])
    split_tiles = {}  # state dtype -> {"pairs": the fastest tiles in pairs, "split": a token a step}
    for dtype in args.split_dtypes.split(",") if args.split_sweep else []:
        with torch.inference_mode():
            split_tiles[dtype] = dict(zip(("pairs", "split"), bench_step_tiles(
                shipped, device, args.split_sweep, getattr(torch, dtype), args.precision, emit, split=True)))
    for spec in filter(None, args.device_additions.split(",")):
        batch, step_kind, *dtype = spec.split(":") + ([] if ":" in spec else ["pairs"])
        dtype = dtype[0] if dtype else "float32" if step_kind == "fused" else "bfloat16"
        if step_kind == "fused" and dtype != "float32":
            raise SystemExit(f"--device-additions {spec}: FusedStep's state is the policy's, float32")
        try:
            tiles = (split_tiles.get(dtype, {}).get(step_kind) if step_kind in ("split", "pairs")
                     else best_tiles.get(dtype))
            bench_device_additions(shipped, device, int(batch), 1000, getattr(torch, dtype), args.precision,
                                   args.steps_per_graph, emit, tiles, step_kind)
        except Exception as e:  # record it and go on to the next configuration
            traceback.print_exc()
            emit({"kind": "device_additions_error", "batch": int(batch), "state_dtype": dtype, "step": step_kind,
                  "error": repr(e)[:300]})
        gc.collect()
        torch.cuda.empty_cache()
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
    tiles = [r for r in records if r["kind"] == "step_tiles" and "error" not in r]
    if tiles:
        lines += ["", "## The one-kernel step alone, by tile shape (shipped Mamba, greedy ids out, no tools)",
                  "| batch | state | weights | rows/program | channels/block | warps | stages | ms/step | % of limit | "
                  "in pairs: ms/step, 2 tokens a row / 1 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(tiles, key=lambda r: (r.get("split", False), r["state_dtype"], r["ms_per_step"]))[:24]:
            stages = r.get("num_stages", "")
            if r.get("split"):  # SplitStepKernel; the 2026-11-29 atomic version had no SSM kernel of its own
                stages = f"split; SSM {r['ssm_block_c']} ch, {r['ssm_warps']} warps" if "ssm_block_c" in r else "split"
                stages += f", {r['ssm_math']} update" if r.get("ssm_math") else ""  # None: the state dtype's default
            lines.append(f"| {r['batch']:,} | {r['state_dtype']} | {r['weight_dtype']} | {r['block_m']} | {r['block_c']} | "
                         f"{r['num_warps']} | {stages} | {fmt(r['ms_per_step'])} | {100 * r['fraction_of_limit']:.1f}% | "
                         + (f"{fmt(r['ms_per_step_2_tokens'])} / {fmt(r['ms_per_step_1_tokens'])} |"
                            if "ms_per_step_2_tokens" in r else " |"))
    for r in (r for r in records if r["kind"] == "step_kernels"):
        read = f", reading {r['read']}" if "read" in r else ""
        lines += ["", f"Where the fastest tiles' step goes at {r['batch']:,} rows{read} (ms a step, by kernel): " + ", ".join(
            f"{name} {ms:.3f}" for name, ms in sorted(r["ms_per_step_by_kernel"].items(), key=lambda kv: -kv[1]))]
    adds = [r for r in records if r["kind"] == "device_additions"]
    if adds:
        lines += ["", "## 1,000-digit additions, tools on the GPU (PointerBatch), shipped Mamba; step: SplitStepKernel "
                  "(split; pairs: a forced token read with the one before it), StepKernel (kernel) or the runtime's FusedStep (fused)",
                  f"Limit: the state read and written each step over {hw['bandwidth'] / 1e9:,.0f} GB/s.", "",
                  "| batch | step | state | matmuls | steps/graph | correct | seconds | additions/s | tokens/s | ms/step | "
                  "limit ms/step | % of limit |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in adds:
            limit = 2 * r["state_bytes_per_row"] * r["batch"] / hw["bandwidth"]
            step = r.get("step", "kernel")
            tiles = r.get("tiles") or {}
            matmuls = ("fp32 (cuBLAS)" if step == "fused" else
                       "bf16" if isinstance(tiles, dict) and tiles.get("weight_dtype") == "bfloat16" else r["precision"])
            lines.append(f"| {r['batch']:,} | {step} | {r['state_dtype']} | {matmuls} | {r['steps_per_graph']} | "
                         f"{r['correct']:,} of {r['episodes']:,} | {r['seconds']:.1f} | {r['additions_per_s']:,.0f} | "
                         f"{fmt(r['tokens_per_s'])} | {fmt(r['ms_per_step'])} | {fmt(1e3 * limit)} | "
                         f"{100 * 1e3 * limit / r['ms_per_step']:.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
