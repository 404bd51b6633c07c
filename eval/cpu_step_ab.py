"""Paired timing of the CPU decode step: this checkout's CPUDecoder against the one at a git ref.

This project's shared 2-core machine runs the same step at 0.19 or 0.29 ms from one minute to the
next (CPU time, not waiting: process time equals wall time), so a 5% change is visible only
when the two versions alternate in short windows and are compared window by window. Both run
the shipped addition model; their logits are checked to agree first.

    python eval/cpu_step_ab.py REF [--batch 1] [--rounds 40]
"""

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time

import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.policies.mamba import CPUDecoder


def decoder_at(ref: str):
    """CPUDecoder as mamba_agent/policies/mamba.py defines it at git `ref`."""
    source = subprocess.run(["git", "show", f"{ref}:mamba_agent/policies/mamba.py"], capture_output=True, text=True,
                            check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("mamba_at_ref", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CPUDecoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ref", help="git ref of the version to compare against, e.g. HEAD or a commit")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40, help="windows of each version, alternating")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = load_checkpoint("builtin:addition-mamba")[0]
    decoders = {args.ref: decoder_at(args.ref)(policy, args.batch), "this checkout": CPUDecoder(policy, args.batch)}
    tokens = [5] * args.batch
    for _ in range(30):  # the same logits, and warm caches
        old, new = (d.step(tokens).clone() for d in decoders.values())
        torch.testing.assert_close(new, old, atol=1e-4, rtol=1e-4)
        tokens = old.argmax(-1).tolist()
    steps = max(1, 300 // args.batch)
    times = {name: [] for name in decoders}
    for r in range(args.rounds):
        for name in list(decoders)[:: 1 if r % 2 else -1]:  # alternate which goes first
            start = time.process_time()
            for _ in range(steps):
                decoders[name].step_greedy(tokens)
            times[name].append((time.process_time() - start) / steps * 1e3)
    for name, t in times.items():
        print(f"{name}: batch {args.batch}, ms a step: min {min(t):.4f}, median {statistics.median(t):.4f}")
    ratios = [new / old for old, new in zip(*times.values())]
    print(f"this checkout / {args.ref}, window by window: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
