"""Training throughput of the Mamba policy: our training step, and on CUDA mamba-ssm's own
(`MambaLMHeadModel`, the same config and weights), beside the hardware limit.

    python -m mamba_agent.eval.train_bench --device cpu --out eval/results/DATE-train-bench-cpu
    python -m mamba_agent.eval.train_bench --device cuda --precision bf16 --batch-size 128 \\
        --set d_model=768 --set n_layer=24 --seq-len 2048 --out eval/results/DATE-train-bench-h200

A step is the trainer's: forward, the cross-entropy on the model tokens, backward, AdamW. The
batch is the task's training data (one `make_batch`, padded to its longest trajectory) or, with
`--seq-len`, random tokens of that length, every one scored. Tokens a second count every
position of the batch (what the step computes); model tokens count the scored ones. Flops are
6 x parameters a token (forward 2, backward 4; the scan's few flops a state value not counted),
over the peak: on the CPU a measured 2048^3 fp32 matmul on the threads in use; on CUDA the
datasheet's dense peak for the precision (H200/H100: 989 TFLOP/s bf16 on tensor cores, 67
TFLOP/s fp32 without them, which fp32 matmuls use unless TF32 is allowed; `--peak` overrides).
Writes `train_bench.jsonl`, a record a measurement, appended as each finishes.
"""

import argparse
import json
import random
import resource
import statistics
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from mamba_agent.policies import MambaConfig, build_policy
from mamba_agent.policies.mamba import _kernels
from mamba_agent.policies.mamba_scan import cpu_kernel
from mamba_agent.tasks import get_task
from mamba_agent.train import make_batch
from mamba_agent.vocab import VOCAB_SIZE

CUDA_PEAK = {"bf16": 989e12, "fp32": 67e12}  # H200 / H100 SXM datasheet, dense


def cpu_peak() -> float:
    m = torch.randn(2048, 2048)
    m @ m
    t = time.perf_counter()
    for _ in range(5):
        m @ m
    return 5 * 2 * 2048**3 / (time.perf_counter() - t)


def mamba_ssm_model(ours, weights: dict, device: str):
    """mamba-ssm's MambaLMHeadModel with our policy's config and `weights` (a strict load)."""
    from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig  # CUDA machines only
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    c = ours.config
    model = MambaLMHeadModel(SsmConfig(
        d_model=c.d_model, n_layer=c.n_layer, vocab_size=c.vocab_size,
        ssm_cfg={"layer": "Mamba1", "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand, "dt_rank": c.dt_rank},
        rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=c.pad_vocab_size_multiple,
    )).to(device)
    model.load_state_dict(weights, strict=True)
    return lambda tokens: model(tokens).logits[..., : c.vocab_size], model


def time_steps(forward, model, batch, device: str, precision: str, warmup: int, steps: int) -> list[float]:
    inputs, targets, mask = batch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, torch.bfloat16, enabled=precision == "bf16"):
            logits = forward(inputs)
        loss = F.cross_entropy(logits[mask].float(), targets[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--task", default="addition")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, help="random tokens of this length instead of the task's batch")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="Mamba config field")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak", type=float, help="peak flop/s to compare with (default: see the module doc)")
    p.add_argument("--no-mamba-ssm", action="store_true", help="on CUDA, time only our step")
    p.add_argument("--out", required=True, help="folder for train_bench.jsonl")
    args = p.parse_args(argv)

    fields = dict(kv.split("=", 1) for kv in args.set)
    torch.manual_seed(0)
    ours = build_policy(MambaConfig(vocab_size=VOCAB_SIZE, **fields)).to(args.device)
    if args.seq_len:
        tokens = torch.randint(0, VOCAB_SIZE, (args.batch_size, args.seq_len + 1))
        batch = tokens[:, :-1], tokens[:, 1:], torch.ones(args.batch_size, args.seq_len, dtype=torch.bool)
    else:
        batch = make_batch(get_task(args.task), random.Random(0), args.batch_size)
    batch = tuple(x.to(args.device) for x in batch)
    peak = args.peak or (CUDA_PEAK[args.precision] if args.device == "cuda" else cpu_peak())
    if args.device == "cuda":
        path = "mamba-ssm kernels" if _kernels() else "PyTorch (mamba-ssm kernels unavailable)"
    else:
        path = "fused CPU scan" if cpu_kernel() else "chunked PyTorch scan (no C compiler)"
    initial = {k: v.clone() for k, v in ours.state_dict().items()}  # our steps change ours; theirs starts here too
    runs = [("mamba-agent", lambda: (ours, ours), path)]
    if args.device == "cuda" and not args.no_mamba_ssm:
        runs.append(("mamba-ssm", lambda: mamba_ssm_model(ours, initial, args.device), "MambaLMHeadModel"))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = ours.num_parameters()
    base = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "precision": args.precision, "batch_size": args.batch_size, "tokens": batch[0].numel(),
        "model_tokens": int(batch[2].sum()), "parameters": params, "config": ours.config.model_dump(),
        "peak_flops": peak, "torch": torch.__version__,
    }
    for name, build, implementation in runs:
        record = {**base, "implementation": name, "path": implementation}
        try:
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            forward, model = build()
            times = time_steps(forward, model, batch, args.device, args.precision, args.warmup, args.steps)
            step = statistics.median(times)
            record.update(
                step_s=step, step_s_all=times, tokens_per_s=base["tokens"] / step, model_tokens_per_s=base["model_tokens"] / step,
                flops_per_s=6 * params * base["tokens"] / step, fraction_of_peak=6 * params * base["tokens"] / step / peak,
                peak_memory_mb=(torch.cuda.max_memory_allocated() if args.device == "cuda"
                                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,
            )
        except Exception as e:  # one implementation failing (mamba-ssm missing) still leaves the others' numbers
            record["error"] = "".join(traceback.format_exception_only(e)).strip()
        with open(out / "train_bench.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        summary = {k: record.get(k) for k in ("implementation", "path", "step_s", "tokens_per_s", "fraction_of_peak", "peak_memory_mb", "error")}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
