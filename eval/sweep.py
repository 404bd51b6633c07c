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
which code (`commit`) made it. Rows are appended to a JSONL file as each episode finishes; a
rerun skips what is already there for the same label and weights.
"""

import gzip
import json
import random
import time
from pathlib import Path

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.console import Bar
from mamba_agent.episode import DIVERGED, FINISHED
from mamba_agent.provenance import commit
from mamba_agent.runtime import run_episodes
from mamba_agent.tasks import get_task


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


def evaluate(checkpoint: str, sizes: list[int], samples: int, out: str | Path, batch_size: int = 100,
             device: str = "cpu", label: str | None = None, progress: bool = True,
             stop_at_divergence: bool = False) -> list[dict]:
    """Run what is missing from `out` for this checkpoint; return all of its results there."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    policy, meta = load_checkpoint(checkpoint, device=device)
    task = get_task(meta["task"])
    if why := next(filter(None, map(task.size_error, sizes)), None):
        raise ValueError(why)
    label, sha = label or checkpoint, meta["checkpoint_sha256"]
    provenance = {"checkpoint_sha256": sha, "task_version": meta["task_version"], "commit": commit()}
    done = {(r["size"], r["index"]) for r in load_results(out) if r["label"] == label and r.get("checkpoint_sha256") == sha}
    todo = [(n, i) for n in sizes for i in range(samples) if (n, i) not in done]
    bar = Bar(f"eval {label}", len(todo)) if progress and todo else None
    cases = {}  # episode -> (size, index, problem)

    def episodes():  # made as rows free up, so an oracle is computed only when it is needed
        for n, i in todo:
            p = eval_problem(task, n, i)
            ep = task.episode(p, expected=task.oracle(p).model_tokens(), stop_at_divergence=stop_at_divergence)
            cases[ep] = (n, i, p)
            yield ep

    with open(out, "a") as f:

        def record(ep) -> None:
            n, i, p = cases.pop(ep)
            correct = None if ep.exit == DIVERGED else ep.exit == FINISHED and task.check(p, ep.answer, ep.tools)
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
            f.write(json.dumps(row) + "\n")
            f.flush()
            if bar:
                bar.advance(1)

        run_episodes(policy, episodes(), batch_size=min(batch_size, max(len(todo), 1)), on_done=record, device=device)
    if bar:
        bar.close()
    return [r for r in load_results(out) if r["label"] == label and r.get("checkpoint_sha256") == sha]
