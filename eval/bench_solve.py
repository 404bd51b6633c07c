"""Wall time, speed and memory of one solve on this machine (issue 2's CPU measurement).

    python -m mamba_agent.eval.bench_solve CHECKPOINT [--task-file F] [--max-tokens N]

Prints one JSON line: tokens, seconds, tokens/s per 1,000-token window (first, last), peak RSS
of the process, RSS before decoding (after import and load), and the policy state's bytes at the
end (Mamba: fixed; Transformer: the KV cache). One thread, greedy, as `mamba-agent solve` runs.
"""

import argparse
import json
import platform
import resource
import time

import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.runtime import run_episodes
from mamba_agent.taskfile import load_taskfile
from mamba_agent.tasks import get_task


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--task-file", default="tasks/examples/addition.yaml")
    ap.add_argument("--max-tokens", type=int, help="stop here (a policy that never finishes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tf, problem = load_taskfile(args.task_file)
    task = get_task(tf.task)
    policy, meta = load_checkpoint(args.checkpoint)
    rss_before = rss_mib()
    episode = task.episode(problem, max_tokens=args.max_tokens or task.max_tokens(problem))
    marks = []  # (tokens, seconds) every progress call

    def progress():
        marks.append((episode.n_tokens, episode.seconds))

    state = run_episodes(policy, [episode], on_progress=progress, progress_seconds=0.5).state
    rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(marks, marks[1:]) if b[1] > a[1]]
    print(json.dumps({
        "checkpoint": args.checkpoint, "policy": meta["policy"]["kind"], "parameters": policy.num_parameters(),
        "task_file": args.task_file, "size": problem.size, "exit": episode.exit,
        "correct": task.check(problem, episode.answer, episode.tools), "tokens": episode.n_tokens,
        "seconds": round(episode.seconds, 2), "tokens_per_s": round(episode.n_tokens / episode.seconds, 1),
        "tokens_per_s_first_window": round(rates[0], 1) if rates else None,
        "tokens_per_s_last_window": round(rates[-1], 1) if rates else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_decoding_mib": round(rss_before, 1),
        "state_bytes_at_end": policy.state_nbytes(state),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} thread, torch {torch.__version__}".strip(),
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
