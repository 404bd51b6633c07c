"""Does the shipped addition Mamba still solve when its state is stored in fewer bits?

The CPU reference for the split step's 8-bit state: PyTorch's step in fp32, the SSM state and
the conv window rounded to a dtype after every step (what the kernel stores), through the
runtime (the tools in Python). Prints how many of the problems were solved exactly.

    python -m mamba_agent.eval.state_rounding --digits 1000 --rows 16 --ssm float8_e4m3fn --conv float8_e4m3fn
"""

import argparse
import random
import time

import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.runtime import EpisodeRows, Sampler, run
from mamba_agent.steppers import Stepper
from mamba_agent.tasks import get_task


class Rounded(Stepper):
    """The reference step, its state rounded to `ssm` and `conv` dtypes after every token."""

    def __init__(self, policy, batch_size: int, ssm: torch.dtype, conv: torch.dtype):
        super().__init__(policy, batch_size)
        self.rounded = ((self.state.ssm, ssm), (self.state.conv, conv))

    def logits(self, feed, n_feed=None):
        logits = super().logits(feed)
        for s, dtype in self.rounded:
            s.copy_(s.to(dtype).float())
        return logits

    def prefill(self, tokens):  # token by token, rounded after each as the kernel would
        for t in range(tokens.shape[1]):
            logits = self.logits(tokens[:, t])
        return logits


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
    task = get_task("addition")
    rng = random.Random(args.seed)
    problems = [task.random_problem(rng, args.digits) for _ in range(args.rows)]
    episodes = [task.episode(p, expected=task.oracle_tokens(p)) for p in problems]
    stepper = Rounded(policy, args.rows, getattr(torch, args.ssm), getattr(torch, args.conv))
    start = time.perf_counter()
    with torch.inference_mode():
        run(EpisodeRows(stepper, episodes, Sampler()))
    print(f"{args.digits} digits, SSM state {args.ssm}, conv window {args.conv}: exact {sum(ep.exact for ep in episodes)} "
          f"of {args.rows} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
