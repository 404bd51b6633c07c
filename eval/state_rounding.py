"""Does the shipped addition Mamba still solve when its state is stored in fewer bits?

The CPU reference for SplitStepKernel's 8-bit state: PyTorch's step in fp32, the SSM state and
the conv window rounded to a dtype after every step (what the kernel stores), the pointer tool
as PointerBatch. Prints how many of the problems were solved exactly.

    python -m mamba_agent.eval.state_rounding --digits 1000 --rows 16 --ssm float8_e4m3fn --conv float8_e4m3fn
"""

import argparse
import time

import numpy as np
import torch

from mamba_agent.eval.bench import addition_max_tokens, addition_problems
from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.pointer_batch import PointerBatch, decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--digits", type=int, default=200)
    ap.add_argument("--rows", type=int, default=64, help="problems, solved in one batch")
    ap.add_argument("--ssm", default="float8_e4m3fn", help="dtype the SSM state is rounded to each step")
    ap.add_argument("--conv", default="float8_e4m3fn", help="dtype the conv window is rounded to each step")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(2)
    policy, _ = load_checkpoint("builtin:addition-mamba")
    prompts, refs = addition_problems(np.random.default_rng(args.seed), args.rows, args.digits)
    batch = PointerBatch(prompts, refs, n_pointers=3, max_tokens=addition_max_tokens(prompts, refs, args.digits))
    state = policy.init_state(args.rows)
    rounded = ((state.ssm, getattr(torch, args.ssm)), (state.conv, getattr(torch, args.conv)))

    @torch.no_grad()
    def step(tokens):
        logits = policy.step(tokens, state)
        for s, dtype in rounded:
            s.copy_(s.to(dtype).float())
        return logits.argmax(-1)

    start = time.perf_counter()
    steps = decode(batch, step)
    print(f"{args.digits} digits, SSM state {args.ssm}, conv window {args.conv}: solved {int(batch.solved.sum())} "
          f"of {args.rows} ({steps:,} steps, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
