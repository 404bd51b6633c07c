"""Paired timing of the CPU decode step: this checkout's NumPy step against the one at a git ref.

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
import sys
import tempfile
import time

import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.policies.mamba_cpu import NumpyStepper


def module_at(ref: str, path: str, imports: dict | None = None):
    """The module at `path` as git `ref` has it (None where it has none); `imports`: module name
    -> module to import under that name meanwhile (what it imported at `ref`)."""
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
    if shown.returncode:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(shown.stdout)
    spec = importlib.util.spec_from_file_location("at_ref", f.name)
    module = importlib.util.module_from_spec(spec)
    saved = {name: sys.modules.get(name) for name in imports or {}}
    sys.modules.update(imports or {})
    try:
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            sys.modules[name] = old
    return module


def step_at(ref: str, policy, batch: int):
    """tokens (list) -> greedy ids (list): the NumPy step at `ref` (NumpyStepper, or CPUDecoder
    in policies/mamba.py before it), called as the runtime calls it."""
    if (module := module_at(ref, "mamba_agent/policies/mamba_cpu.py")) is not None:
        return stepping(module.NumpyStepper(policy, batch))
    base = module_at(ref, "mamba_agent/policies/base.py")
    mamba = module_at(ref, "mamba_agent/policies/mamba.py", {"mamba_agent.policies.base": base})
    return mamba.CPUDecoder(policy, batch).step_greedy


def stepping(stepper):
    feed = torch.zeros(stepper.batch_size, dtype=torch.long)
    view = feed.numpy()

    def step(tokens: list[int]) -> list[int]:  # as EpisodeRows reads a token a row
        view[:] = tokens
        return stepper.greedy(feed).tolist()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ref", help="git ref of the version to compare against, e.g. HEAD or a commit")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40, help="windows of each version, alternating")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = load_checkpoint("builtin:addition-mamba")[0]
    steps = {args.ref: step_at(args.ref, policy, args.batch), "this checkout": stepping(NumpyStepper(policy, args.batch))}
    tokens = [5] * args.batch
    for _ in range(30):  # the same ids, and warm caches
        old, new = (step(tokens) for step in steps.values())
        assert old == new, (old, new)
        tokens = old
    times = {name: [] for name in steps}
    n = max(1, 300 // args.batch)
    for r in range(args.rounds):
        for name in list(steps)[:: 1 if r % 2 else -1]:  # alternate which goes first
            start = time.process_time()
            for _ in range(n):
                steps[name](tokens)
            times[name].append((time.process_time() - start) / n * 1e3)
    for name, t in times.items():
        print(f"{name}: batch {args.batch}, ms a step: min {min(t):.4f}, median {statistics.median(t):.4f}")
    ratios = [new / old for old, new in zip(*times.values())]
    print(f"this checkout / {args.ref}, window by window: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
