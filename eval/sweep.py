"""Length-generalisation sweep: accuracy of checkpoints against problem size, two metrics.

Problem i of size n is the same for every checkpoint (seeded by task, size and i). Episodes run
through the real runtime, `batch_size` rows in lockstep (a finished episode's row takes the next
one at once), greedy, each compared with its oracle's model tokens as it goes. Every row has
  exact    the whole trajectory equals the oracle's (the paper's metric);
  correct  the episode finished and the task's checker accepts its answer (for code_debug: a fix
           a maintainer would merge), however it got there; None when it was not run to its end.
With `stop_at_divergence` an episode ends at its first token off the oracle (exact is decided
there; cheaper for policies that fail long problems), and `correct` is None for those.
Each row also says which weights (`checkpoint_sha256`), which trajectory (`task_version`) and
which code (`commit`) made it, and how it was decoded (`rows`, `step`, `state_dtype`: the
runtime's choice, the same verdicts on every one). Rows are appended to a JSONL file as each
episode finishes; a rerun skips what is already there for the same label and weights.
`trajectories`: a folder for the trajectory files of the first `trajectory_sample` problems of
each size (all of them by default), as `solve` writes them.

Under torchrun (`torchrun --nproc_per_node N -m mamba_agent.cli eval ...`) each rank takes every
Nth problem still to do, on its own GPU (cuda:LOCAL_RANK) or CPU process, and appends its rows
to its own part file (OUT.rank<r>); when every rank is done, rank 0 appends the parts to OUT, so
OUT holds each problem once. A part left by a run that was stopped is folded in by the next run.
"""

import gzip
import itertools
import json
import multiprocessing
import os
import random
import re
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.console import Bar, stderr
from mamba_agent.episode import DIVERGED, FINISHED
from mamba_agent.provenance import commit
from mamba_agent.runtime import plan, run_episodes
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import TrajectoryWriter


def eval_problem(task, size: int, index: int):
    """Problem `index` of `size`: the task's edge cases first, then random ones (seeded)."""
    edges = task.edge_cases(size)
    if index < len(edges):
        return edges[index]
    return task.random_problem(random.Random(f"eval-{task.name}-{size}-{index}"), size)


def load_results(path: Path) -> list[dict]:
    """The rows of a results file: JSONL, or JSONL compressed as .gz (how large finished ones are kept)."""
    if not path.exists():
        return []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_case(task_name: str, size: int, index: int) -> tuple:
    """(problem, the oracle's model tokens as int16): what an evaluation episode needs."""
    task = get_task(task_name)
    p = eval_problem(task, size, index)
    return p, np.asarray(task.oracle_tokens(p), np.int16)


def _eval_case(args: tuple) -> tuple:
    return eval_case(*args)


def prepared(task, todo: list[tuple[int, int]], world: int = 1):
    """Each problem of `todo` with its oracle's tokens, in order; made by worker processes where
    there are many and cores to spare (a 12-disk Hanoi oracle takes 0.6 s, 100 of them a minute
    on one core)."""
    workers = min((os.cpu_count() or 1) // world - 1, len(todo) // 4, 15)
    if workers < 2:
        yield from (eval_case(task.name, n, i) for n, i in todo)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: no CUDA state forked
        chunk = max(1, min(64, len(todo) // (8 * workers)))
        yield from pool.imap(_eval_case, [(task.name, n, i) for n, i in todo], chunk)


def ranks() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) without it; the process group made once (gloo:
    it only waits for the other ranks, GPU or not)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=timedelta(days=1))
    return int(os.environ.get("RANK", 0)), world


def _key(row: dict) -> tuple:
    return row["label"], row.get("checkpoint_sha256"), row["size"], row["index"]


def _fold_parts(out: Path) -> None:
    """Append the ranks' part files to `out` (rows it lacks) and remove them."""
    parts = sorted(out.parent.glob(out.name + ".rank*"))
    if not parts:
        return
    done = {_key(r) for r in load_results(out)}
    with open(out, "a") as f:
        for part in parts:
            for row in load_results(part):
                if _key(row) not in done:
                    done.add(_key(row))
                    f.write(json.dumps(row) + "\n")
    for part in parts:
        part.unlink()


def evaluate(checkpoint: str, sizes: list[int], samples: int, out: str | Path, batch_size: int = 100,
             device: str = "cpu", label: str | None = None, progress: bool = True,
             stop_at_divergence: bool = False, rows: str = "auto", step: str = "auto",
             state_dtype: str = "float32", trajectories: str | Path | None = None,
             trajectory_sample: int | None = None) -> list[dict]:
    """Run what is missing from `out` for this checkpoint; return all of its results there (on
    rank 0; the other ranks return none)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rank, world = ranks()
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    policy, meta = load_checkpoint(checkpoint, device=device)
    task = get_task(meta["task"])
    if why := next(filter(None, map(task.size_error, sizes)), None):
        raise ValueError(why)
    label, sha = label or checkpoint, meta["checkpoint_sha256"]
    mine = (lambda r: r["label"] == label and r.get("checkpoint_sha256") == sha)
    if rank == 0:
        _fold_parts(out)
    if world > 1:
        torch.distributed.barrier()
    done = {(r["size"], r["index"]) for r in load_results(out) if mine(r)}
    todo = [(n, i) for n in sizes for i in range(samples) if (n, i) not in done][rank::world]
    weights = {"checkpoint_sha256": sha, "task_version": meta["task_version"], "commit": commit()}
    provenance = dict(weights)  # and how it was decoded, once chosen
    traj_dir = Path(trajectories) if trajectories else None
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label.removeprefix("builtin:").strip("/"))
    bar = Bar(f"eval {label}" + (f" (rank {rank})" if world > 1 else ""), len(todo)) if progress and todo else None
    cases = {}  # episode -> (size, index, problem)

    ready = []  # when the first batch of episodes was made: decoding starts there

    def episodes():  # made as rows free up
        for k, ((n, i), (p, expected)) in enumerate(zip(todo, prepared(task, todo, world))):
            if k == min(batch_size, len(todo)) - 1:
                ready.append(time.monotonic())
            writer = None
            if traj_dir is not None and (trajectory_sample is None or i < trajectory_sample):
                header = {"task": task.name, "input": p.input, "policy": meta["policy"]["kind"], "size": n,
                          "index": i, "checkpoint": checkpoint, **weights}
                writer = TrajectoryWriter(traj_dir / f"{stem}-{n}-{i}.jsonl", header)
            ep = task.episode(p, expected=expected, stop_at_divergence=stop_at_divergence, writer=writer)
            cases[ep] = (n, i, p)
            yield ep

    path = out if world == 1 else out.with_name(f"{out.name}.rank{rank}")
    start = time.monotonic()
    with open(path, "a") as f:

        def record(ep) -> None:
            n, i, p = cases.pop(ep)
            correct = None if ep.exit == DIVERGED else ep.exit == FINISHED and task.check(p, ep.answer, ep.tools)
            ep.close(correct)
            row = {
                "label": label, "policy": meta["policy"]["kind"], "task": task.name, "size": n, "index": i,
                "train_max_size": task.train_max_size, "exact": ep.exact, "correct": correct,
                "exit": ep.exit, "diverged_at": ep.diverged_at,
                "model_tokens": ep.n_model_tokens, "oracle_model_tokens": len(ep.expected),
                "tokens": ep.n_tokens, "seconds": round(ep.seconds, 3), "device": device,
                "date": time.strftime("%Y-%m-%d"), **provenance,
            }
            if window := meta["policy"].get("sliding_window"):
                row["sliding_window"] = window  # a Mistral-style Transformer: the paper's other row
            if ep.writer is not None:
                row["trajectory"] = str(ep.writer.path)
            f.write(json.dumps(row) + "\n")
            f.flush()
            if bar:
                bar.advance(1)

        made = episodes()
        if first := next(made, None):
            rows, step = plan(policy, first, device, 0.0, rows, step)  # the runtime's choice, in every row
            provenance.update(rows=rows, step=step, state_dtype=state_dtype)
            run_episodes(policy, itertools.chain([first], made), batch_size=min(batch_size, len(todo)), on_done=record,
                         device=device, rows=rows, step=step, state_dtype=state_dtype)
    if bar:
        bar.close()
    if todo and progress:
        end = time.monotonic()
        how = f"rows {rows}, step {step}" + (f", {state_dtype} state" if state_dtype != "float32" else "")
        decoding = end - (ready[0] if ready else start)
        stderr.print(f"eval {label}: {len(todo):,} episodes in {end - start:,.1f} s ({len(todo) / (end - start):,.1f} a "
                     f"second; {how}); decoding from the first batch's start {decoding:,.1f} s "
                     f"({len(todo) / decoding:,.1f} a second)")
    if world > 1:
        torch.distributed.barrier()
        if rank == 0:
            _fold_parts(out)
        torch.distributed.barrier()  # the other ranks return once OUT is whole
    return [r for r in load_results(out) if mine(r)] if rank == 0 else []
