"""The commands a user runs: solve with the shipped checkpoint, clear errors, train and resume."""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mamba_agent.cli import main
from mamba_agent.eval.report import report
from mamba_agent.eval.sweep import evaluate
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import read_trajectory

task = get_task("addition")


def write(tmp_path, text: str, name: str = "task.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_solve_json_with_the_shipped_mamba(tmp_path, capsys):
    a, b = "9" * 150, "7" * 149  # held out: training saw at most 5 digits
    traj = tmp_path / "t.jsonl"
    rc = main(["solve", write(tmp_path, f'task: addition\ninput: {{a: "{a}", b: "{b}"}}\n'), "--json", "--trajectory", str(traj)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["correct"] and out["exit"] == "finished"
    assert int(out["answer"]) == int(a) + int(b)
    assert out["tokens"] > 5000 and out["seconds"] > 0
    header, trajectory, end = read_trajectory(traj)
    oracle = task.oracle(task.problem({"a": a, "b": b}))
    assert trajectory.tokens == oracle.tokens and end["correct"]  # the whole trajectory, exactly


def test_shipped_mamba_solves_held_out_sizes(tmp_path):
    results = evaluate("builtin:addition-mamba", [7, 40], samples=6, out=tmp_path / "r.jsonl", batch_size=12, progress=False)
    assert len(results) == 12 and all(r["exact"] and r["correct"] for r in results)
    table = report(results)
    assert "| exact trajectory | 100% (6) | 100% (6) | 5 -> 40 (100%) | 5 -> 1,000 (100%) |" in table
    assert "| correct | 100% (6) | 100% (6) | | |" in table
    again = evaluate("builtin:addition-mamba", [7, 40], samples=6, out=tmp_path / "r.jsonl", progress=False)
    assert len(again) == 12  # finished samples are not recomputed


@pytest.mark.parametrize("checkpoint, sizes", [("builtin:addition-mamba2", [9, 60]), ("builtin:multiplication-1-mamba2", [30, 60])])
def test_shipped_mamba2_solves_held_out_sizes(tmp_path, checkpoint, sizes):
    """The Mamba-2s trained on the CPU, on 1..5 and 1..10 digits (measured: 100 of 100 at 1,000)."""
    from mamba_agent.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoint)[0].config.kind == "mamba2"
    results = evaluate(checkpoint, sizes, samples=4, out=tmp_path / "r.jsonl", batch_size=8, progress=False)
    assert len(results) == 8 and all(r["exact"] and r["correct"] for r in results)


@pytest.mark.parametrize("checkpoint", ["builtin:multiplication-1-mamba", "builtin:multiplication-2-mamba"])
def test_shipped_multiplication_mamba_solves_held_out_sizes(tmp_path, checkpoint):
    """Trained on a of 1..10 digits; held out: 30 and 60 digits."""
    results = evaluate(checkpoint, [30, 60], samples=4, out=tmp_path / "r.jsonl", batch_size=8, progress=False)
    assert len(results) == 8 and all(r["exact"] for r in results)


@pytest.mark.slow
def test_shipped_hanoi_mamba_solves_held_out_sizes(tmp_path):
    """Trained on 1..8 disks; held out: 9 disks (about 60,000 tokens each; measured on the H200:
    100% at 9, 10 and 12 disks, 10 each, two seeds)."""
    results = evaluate("builtin:hanoi-mamba", [9], samples=2, out=tmp_path / "r.jsonl", batch_size=2, progress=False)
    assert len(results) == 2 and all(r["exact"] for r in results)


@pytest.mark.slow
def test_shipped_logical_graph_mamba_solves_held_out_sizes(tmp_path):
    """Trained on 1..10 nodes; held out: 40 nodes (about 9,000 tokens each; measured on the H200:
    99 of 100 at 1,000 nodes)."""
    results = evaluate("builtin:logical_graph-mamba", [40], samples=4, out=tmp_path / "r.jsonl", batch_size=4, progress=False)
    assert len(results) == 4 and all(r["exact"] for r in results)


def test_report_puts_a_sliding_window_run_beside_the_papers_mistral_row():
    row = {"label": "runs/m1-window", "policy": "transformer", "sliding_window": 64, "task": "multiplication-1",
           "train_max_size": 10, "exit": "finished"}
    table = report([{**row, "size": 10, "exact": True}, {**row, "size": 20, "exact": False}])
    assert "| runs/m1-window | transformer-window | exact trajectory | 100% (1) | 0% (1) | 10 -> 10 (100%) | 10 -> 13 (25%) |" in table


def test_report_never_rounds_a_miss_up_to_100_percent():
    row = {"label": "runs/nocot", "policy": "mamba", "task": "addition-nocot", "train_max_size": 5, "exit": "finished", "size": 5}
    table = report([{**row, "exact": i >= 4} for i in range(1000)])  # 996 of 1,000
    assert "| 99.6% (1000) | 5 -> 5 (99.6%) |" in table
    assert "| 100% (3) |" in report([{**row, "exact": True}] * 3)


@pytest.mark.slow
def test_solve_streams_each_tool_call_and_fixes_the_example_codebase(tmp_path, capsys):
    """The shipped code_debug Mamba (trained on 4..16 functions) fixes the example's 32-function
    codebase in the real sandbox (it does not fix every one: eval/README.md has the rates), and
    `solve` prints each view, edit and run as it happens."""
    example = Path(__file__).parents[1] / "tasks/examples/code-debug.yaml"
    rc = main(["solve", str(example), "--trajectory", str(tmp_path / "t.jsonl")])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.strip() == "fixed"
    calls = [line for line in captured.err.splitlines() if " → " in line]
    assert any(c.startswith("[RUN]") for c in calls) and any(c.startswith("[EDIT]") for c in calls)
    assert "exit 0" in [c for c in calls if c.startswith("[RUN]")][-1]  # the last run is clean
    assert any(line.startswith("correct · exit finished") for line in captured.err.splitlines())  # own line


@pytest.mark.parametrize(
    "text,expected",
    [
        ('task: addition\ninput: {a: "12x", b: "3"}\n', "input.a: "),
        ('task: addition\ninput: {a: "1", b: "3"}\ncolour: red\n', "colour: "),
        ('task: additon\ninput: {a: "1", b: "3"}\n', "unknown task 'additon'; valid tasks: addition"),
        ('task: addition\ninput: {a: "1", b: "3"}\nsize: 4\n', "exactly one of"),
        ('task: addition\ninput: {a: "1", b: "3"}\npolicy: {checkpoint: /nowhere}\n', "checkpoint: /nowhere is not a checkpoint"),
        ('task: addition\ninput: {a: 12, b: "3"}\n', "input.a: give the operand as a quoted string"),
        ("task: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_task_file_is_one_line_and_exit_2(tmp_path, capsys, text, expected):
    rc = main(["solve", write(tmp_path, text)])
    err = capsys.readouterr().err
    assert rc == 2
    assert expected in err and len(err.strip().splitlines()) == 1, err


def test_missing_task_file(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nope.yaml")]) == 2
    assert "no such task file" in capsys.readouterr().err


def test_train_resumes_exactly_where_it_stopped(tmp_path, capsys):
    common = ["train", "--set", "d_model=32", "--set", "n_layer=1", "--batch-size", "4", "--save-every", "2", "--device", "cpu"]
    assert main(common + ["--steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert main(common + ["--steps", "2", "--out", str(tmp_path / "resumed")]) == 0  # "crash" after step 2
    assert main(common + ["--steps", "4", "--data-workers", "2", "--out", str(tmp_path / "resumed")]) == 0
    capsys.readouterr()
    w1 = safetensors.torch.load_file(tmp_path / "straight" / "model.safetensors")
    w2 = safetensors.torch.load_file(tmp_path / "resumed" / "model.safetensors")
    # the same weights: resumed at step 2, and data from two worker processes instead of none
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    meta = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert meta["training"]["steps"] == 4 and meta["policy"]["d_model"] == 32
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_train_init_from_starts_from_the_checkpoint_weights(tmp_path, capsys):
    common = ["train", "--batch-size", "4", "--device", "cpu"]
    assert main(common + ["--set", "d_model=32", "--set", "n_layer=1", "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    # lr 0: two more steps that change nothing, so the weights are the checkpoint's, config included
    assert main(common + ["--init-from", str(tmp_path / "a"), "--lr", "0", "--steps", "2", "--seed", "1", "--out", str(tmp_path / "b")]) == 0
    w1 = safetensors.torch.load_file(tmp_path / "a" / "model.safetensors")
    w2 = safetensors.torch.load_file(tmp_path / "b" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["policy"]["d_model"] == 32
    capsys.readouterr()
    assert main(common + ["--task", "multiplication", "--init-from", str(tmp_path / "a"), "--out", str(tmp_path / "c")]) == 2
    assert "--task addition" in capsys.readouterr().err


def test_train_max_seconds_ends_the_run_and_saves(tmp_path, capsys):
    args = ["train", "--set", "d_model=32", "--set", "n_layer=1", "--batch-size", "4", "--device", "cpu",
            "--steps", "1000", "--max-seconds", "0.001", "--out", str(tmp_path)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1  # out of time after the first step, saved there
    assert json.loads((tmp_path / "config.json").read_text())["training"]["steps"] == 1


@pytest.mark.slow
def test_train_on_two_ranks_with_torchrun_and_a_time_budget(tmp_path):
    """DDP on the CPU (gloo): both ranks follow rank 0's clock, so they stop at the same step
    (a rank that stopped alone would leave the other hanging in its all-reduce)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = tmp_path / "rank-logs"  # each rank's own output: the launcher's alone does not say why a rank died
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "--redirects", "3", "--log-dir", str(logs), "-m", "mamba_agent.cli", "train", "--set", "d_model=32", "--set", "n_layer=1", "--batch-size", "4",
           "--device", "cpu", "--steps", "10000", "--max-seconds", "3", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    rank_output = "".join(f"--- {f}\n{f.read_text()[-1500:]}" for f in sorted(logs.rglob("std*.log")))
    assert done.returncode == 0, done.stderr[-1000:] + rank_output
    training = json.loads((tmp_path / "config.json").read_text())["training"]
    assert training["world_size"] == 2 and 1 <= training["steps"] < 10000


def test_eval_on_two_ranks_with_torchrun_leaves_each_problem_once(tmp_path):
    """Two CPU ranks (gloo) split the problems; OUT holds each once and no part is left; a part
    left by a stopped run is folded in by the next, which then runs only what is missing."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "results.jsonl"

    def run() -> list[dict]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "mamba_agent.cli", "eval", "builtin:addition-mamba", "--sizes", "1,4", "--samples", "3",
               "--batch-size", "2", "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not list(tmp_path.glob("results.jsonl.rank*"))
        return [json.loads(line) for line in out.read_text().splitlines()]

    rows = run()
    assert sorted((r["size"], r["index"]) for r in rows) == [(n, i) for n in (1, 4) for i in range(3)]
    assert all(r["exact"] and r["correct"] for r in rows)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:-2]))  # a stopped run: two rows in a part
    (tmp_path / "results.jsonl.rank1").write_text(json.dumps(rows[-1]) + "\n")
    again = run()
    assert sorted((r["size"], r["index"]) for r in again) == sorted((r["size"], r["index"]) for r in rows)


def test_train_rejects_bad_policy_field(tmp_path, capsys):
    assert main(["train", "--set", "d_modle=32", "--out", str(tmp_path / "x")]) == 2
    assert "d_modle" in capsys.readouterr().err


def test_train_lookup_counts_the_same_data_and_saves_a_checkpoint(tmp_path, capsys):
    from mamba_agent.checkpoint import load_checkpoint

    assert main(["train", "--policy", "lookup", "--set", "k=7", "--steps", "3", "--batch-size", "16", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == 48 and summary["conflicts"] == 0 and summary["contexts"] > 100
    policy, meta = load_checkpoint(tmp_path)
    assert meta["policy"]["kind"] == "lookup" and policy.config.table_size == summary["contexts"]
    assert main(["train", "--policy", "lookup", "--out", str(tmp_path / "nok")]) == 2  # k is required


def test_locality_defaults_to_training_sizes_and_rejects_bad_ones(capsys):
    assert main(["locality", "--task", "hanoi", "--per-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 5 and out["sizes"] == list(range(1, 11))  # 1..8 trained, and two beyond
    assert main(["locality", "--task", "hanoi", "--sizes", "30"]) == 2
    err = capsys.readouterr().err
    assert "--sizes: " in err and "at most 20 disks" in err and len(err.strip().splitlines()) == 1


def test_length_buckets_regroup_the_same_trajectories_by_length():
    """G steps' batches are the same trajectories as without buckets, sorted into batches of like
    length; a run resumed inside a block, or with more data workers, gets the same batches."""
    from mamba_agent.train import Batches
    from mamba_agent.vocab import PAD

    def batches(buckets, start=0, workers=0):
        data = Batches("hanoi", 0, 0, 4, start, 8, buckets)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers)
        return [b for block in loader for b in block]

    def rows(batch):
        inputs, targets, _ = batch
        return {tuple(t[t != PAD].tolist()) for t in torch.cat([inputs[:, :1], targets], 1)}

    plain, bucketed = batches(1), batches(4)
    assert len(plain) == len(bucketed) == 8
    for block in (slice(0, 4), slice(4, 8)):
        assert set().union(*map(rows, plain[block])) == set().union(*map(rows, bucketed[block]))
    padded = lambda bs: sum(b[0].numel() for b in bs)
    assert padded(bucketed) < 0.75 * padded(plain)  # Hanoi: 1..8 disks, ~70 to ~30,000 tokens
    resumed = batches(4, start=3, workers=2)
    assert all(torch.equal(x, y) for a, b in zip(bucketed[3:], resumed) for x, y in zip(a, b))
    assert len(resumed) == 5


def test_report_reads_gzipped_results_and_eval_refuses_to_append_to_them(tmp_path, capsys):
    import gzip

    row = {"label": "runs/x", "policy": "mamba", "task": "addition", "train_max_size": 5, "exit": "finished", "size": 5, "index": 0, "exact": True}
    with gzip.open(tmp_path / "r.jsonl.gz", "wt") as f:
        f.write(json.dumps(row) + "\n")
    assert main(["report", str(tmp_path / "r.jsonl.gz")]) == 0
    assert "| runs/x | mamba | exact trajectory | 100% (1) |" in capsys.readouterr().out
    assert main(["eval", "builtin:addition-mamba", "--sizes", "5", "--out", str(tmp_path / "r.jsonl.gz")]) == 2
    assert "gunzip" in capsys.readouterr().err
