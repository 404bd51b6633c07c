"""Re-score the code-debug checkpoints with the strict checker, beside the old one and an
independent re-run (2026-12-07, issue 17).

    python eval/results/2026-12-07-code-debug-strict/rescore.py CHECKPOINT LABEL OUT.jsonl SIZE:SAMPLES ...

The same problems as `mamba-agent eval` (eval_problem), episodes run to their end (not cut at the
first divergence), greedy, every run in the real bubblewrap sandbox. Each row is an eval row
(exact, correct = the strict checker) plus
  old       the checker before 2026-12-07 (`threaded` + foo's last field + the line count);
  outside   an independent verdict: the model's files and the maintainer's fix each run with
            real CPython in a fresh sandbox (no simulator), stdout compared, and a line diff
            (no ast) in which every changed line is its original with one v10 inserted, exactly
            on the defs of and calls to the functions that reach foo;
  reason    the strict checker's reason to reject (None: accepted).
Resumable: cases already in OUT are skipped.
"""

import ast
import difflib
import json
import re
import sys
import time
from pathlib import Path

import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.episode import FINISHED
from mamba_agent.eval.sweep import eval_problem, load_results
from mamba_agent.provenance import commit
from mamba_agent.runtime import run_episodes
from mamba_agent.sandboxes import get_sandbox
from mamba_agent.tasks import get_task
from mamba_agent.sandboxes.workspace import Workspace
from mamba_agent.tasks.code_debug import ANSWER, generate
from mamba_agent.tasks.code_debug_sim import CHECK_ARGV
from mamba_agent.tools.files import FileEdit


# --- the old checker (tasks/code_debug.py at 71d983d), kept here only to compare ---------------
def threaded(files: dict[str, str]) -> bool:
    """True when v10 is a parameter of every function that reaches foo, and every call to one of
    them from main or from another of them passes `v10` into that parameter."""
    defs, calls = {}, {}  # function name -> ast.FunctionDef; name -> [ast.Call]
    for name, text in files.items():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return False
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                defs[node.name] = node
                calls[node.name] = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)]
    if "main" not in defs or "foo" not in defs:
        return False
    reaches = {"foo"}
    changed = True
    while changed:
        changed = False
        for f, cs in calls.items():
            if f not in reaches and any(c.func.id in reaches for c in cs):
                reaches.add(f)
                changed = True
    for f in reaches - {"main"}:
        if "v10" not in [a.arg for a in defs[f].args.args]:
            return False
    for f in reaches | {"main"}:
        for c in calls[f]:
            g = c.func.id
            if g not in reaches or g == "main":
                continue
            i = [a.arg for a in defs[g].args.args].index("v10")
            positional = i < len(c.args) and isinstance(c.args[i], ast.Name) and c.args[i].id == "v10"
            keyword = any(k.arg == "v10" and isinstance(k.value, ast.Name) and k.value.id == "v10" for k in c.keywords)
            if not (positional or keyword):
                return False
    return True


def old_verdict(cb, files, run_result) -> bool:
    if not threaded(files):
        return False
    lines = run_result.stdout.splitlines()
    return (run_result.exit_code == 0 and len(lines) == cb.foo_paths()
            and all(line.startswith("foo ") and line.split()[-1] == str(cb.v10) for line in lines))


# --- the independent verdict ---------------------------------------------------------------------
_INSERTIONS = (", v10)", "(v10, ", "(v10)", ", v10=v10)", "(v10=v10)")


def _one_v10_inserted(original: str, changed: str) -> bool:
    for ins in _INSERTIONS:
        for m in re.finditer(re.escape(ins), changed):
            plain = {", v10)": ")", "(v10, ": "(", "(v10)": "()", ", v10=v10)": ")", "(v10=v10)": "()"}[ins]
            if changed[:m.start()] + plain + changed[m.end():] == original:
                return True
    return False


def lines_threaded(cb, files) -> bool:
    reach = cb.reaching()
    for name, original in cb.files().items():
        a, b = original.splitlines(), files[name].splitlines()
        matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
        changed = set()
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            if op != "replace" or i2 - i1 != j2 - j1:
                return False
            for i, j in zip(range(i1, i2), range(j1, j2)):
                if not _one_v10_inserted(a[i], b[j]):
                    return False
                changed.add(i)
        want = {i for i, line in enumerate(a)
                if (m := re.match(r"(?:def |    )(\w+)\(", line)) and m.group(1) in reach and m.group(1) != "main"
                and not (line.startswith("def ") and name == "main.py")}
        if changed != want:
            return False
    return True


def sandbox_run(files):
    ws = Workspace(files)
    try:
        with get_sandbox("bubblewrap", ws.path) as sandbox:
            return sandbox.run(CHECK_ARGV)
    finally:
        ws.close()


def main(checkpoint: str, label: str, out: str, *plan: str) -> None:
    torch.set_num_threads(1)
    policy, meta = load_checkpoint(checkpoint)
    task = get_task(meta["task"])
    done = {(r["size"], r["index"]) for r in load_results(Path(out)) if r["label"] == label}
    todo = [(int(n), i) for spec in plan for n, k in [spec.split(":")] for i in range(int(k)) if (int(n), i) not in done]
    print(f"{len(todo)} episodes to run", flush=True)
    cases = {}

    def episodes():
        for n, i in todo:
            p = eval_problem(task, n, i)
            ep = task.episode(p, expected=task.oracle(p).model_tokens(), stop_at_divergence=False)
            cases[ep] = (n, i, p)
            yield ep

    with open(out, "a") as f:
        def record(ep):
            n, i, p = cases.pop(ep)
            cb = generate(p.input["size"], p.input["seed"])
            workspace = next(t.workspace for t in ep.tools if isinstance(t, FileEdit))
            reason = task.rejection(p, ep.answer, ep.tools) if ep.exit == FINISHED else f"exit {ep.exit}"
            try:
                files = {name: (workspace / name).read_text() for name in cb.files()}
            except (OSError, UnicodeDecodeError):
                files = None
            claimed = ep.exit == FINISHED and ep.answer == ANSWER and files is not None
            ran = sandbox_run(files) if claimed else None
            reference = sandbox_run(cb.fixed_files()) if claimed else None
            outside = bool(claimed and ran.exit_code == 0 and ran.stdout == reference.stdout and lines_threaded(cb, files))
            row = {"label": label, "policy": meta["policy"]["kind"], "task": task.name, "size": n, "index": i,
                   "train_max_size": task.train_max_size, "exact": ep.exact, "correct": reason is None,
                   "old": bool(claimed and old_verdict(cb, files, ran)), "outside": outside, "reason": reason,
                   "exit": ep.exit, "diverged_at": ep.diverged_at, "model_tokens": ep.n_model_tokens,
                   "oracle_model_tokens": len(ep.expected), "tokens": ep.n_tokens, "seconds": round(ep.seconds, 3),
                   "device": "cpu", "date": time.strftime("%Y-%m-%d"), "checkpoint_sha256": meta["checkpoint_sha256"],
                   "task_version": meta["task_version"], "commit": commit()}
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(n, i, "exact" if row["exact"] else "-", "strict" if row["correct"] else "-", "old" if row["old"] else "-",
                  "outside" if outside else "-", reason or "", flush=True)

        run_episodes(policy, episodes(), batch_size=25, on_done=record)


if __name__ == "__main__":
    main(*sys.argv[1:])
