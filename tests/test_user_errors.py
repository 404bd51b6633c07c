"""Every user error: exit 2 and one line naming the flag or field and the fix, never a traceback;
with --json, an object with `error` on stdout. (Ctrl-C and SIGTERM: tests/test_saved_episode.py.)"""

import json
import shutil
import subprocess
import sys
import time

import pytest

from mamba_agent.checkpoint import BUILTIN_DIR
from mamba_agent.cli import main

ADD = 'task: addition\ninput: {a: "12", b: "34"}\n'


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, argv, said):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in err, err
    assert said in lines[0], lines[0]
    return out


@pytest.fixture
def taskfile(tmp_path):
    written = []

    def write(text=ADD):
        path = tmp_path / f"t{len(written)}.yaml"
        written.append(path)
        path.write_text(text + f"trajectory: {tmp_path}/traj{len(written)}.jsonl\n")
        return str(path)
    return write


@pytest.fixture
def damaged(tmp_path):
    made = []

    def make(weights=None, config=None):
        path = tmp_path / f"ckpt{len(made)}"
        made.append(path)
        shutil.copytree(BUILTIN_DIR / "addition-mamba", path)
        if weights is not None:
            (path / "model.safetensors").write_bytes(weights)
        if config is not None:
            (path / "config.json").write_text(config)
        return str(path)
    return make


def test_solve_errors_name_the_field(capsys, taskfile, damaged, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [
        (["solve", taskfile(ADD + "policy: {temperature: -1}\n")], "policy.temperature"),
        (["solve", taskfile(ADD + "policy: {device: gpu}\n")], "policy.device"),
        (["solve", taskfile(), "--device", "mps"], "--device"),
        (["solve", taskfile(ADD + "limits: {max_tokens: -5}\n")], "limits.max_tokens"),
        (["solve", taskfile(ADD + "limits: {max_seconds: 0}\n")], "limits.max_seconds"),
        (["solve", taskfile("task: logical_graph\nsize: 10000000\n")], "size: logical_graph takes sizes 1..25,997"),
        (["solve", taskfile("task: addition\nsize: 1000000000\n")], "size: addition takes sizes 1..10,000,000"),
        (["solve", str(tmp_path)], "is a folder"),
        (["solve", str(tmp_path / "missing.yaml")], "no such task file"),
        (["solve", taskfile(), "--trajectory", str(blocker / "t.jsonl")], "trajectory: cannot write"),
        (["solve", taskfile(), "--trajectory", str(tmp_path)], "trajectory: cannot write"),
        (["solve", taskfile(), "--checkpoint", damaged(weights=b"")], "cannot load the weights"),
        (["solve", taskfile(), "--checkpoint", damaged(weights=(BUILTIN_DIR / "addition-mamba/model.safetensors").read_bytes()[:5000])],
         "cannot load the weights"),
        (["solve", taskfile(), "--checkpoint", damaged(config="{not json")], "not readable JSON"),
        (["solve", taskfile(), "--checkpoint", "builtin:nope"], "no built-in checkpoint"),
        (["solve", taskfile(), "--checkpoint", "builtin:hanoi-mamba"], "trained on 'hanoi'"),
    ]
    for argv, said in cases:
        one_line_error(capsys, argv, said)
        out = one_line_error(capsys, argv + ["--json"], said)
        assert json.loads(out)["error"] and json.loads(out)["exit"] == 2


@pytest.mark.parametrize("argv,said", [
    (["eval", "builtin:addition-mamba", "--sizes", "0"], "--sizes"),
    (["eval", "builtin:addition-mamba", "--sizes", "-3"], "--sizes"),
    (["eval", "builtin:addition-mamba", "--sizes", "5,x"], "--sizes"),
    (["eval", "builtin:hanoi-mamba", "--sizes", "25"], "--sizes: hanoi takes sizes 1..20"),
    (["eval", "builtin:addition-mamba", "--samples", "0"], "--samples"),
    (["eval", "builtin:addition-mamba", "--device", "gpu"], "--device"),
    (["eval", "nowhere"], "is not a checkpoint"),
    (["train", "--steps", "-5", "--out", "x"], "--steps: must be at least 1"),
    (["train", "--lr", "-1", "--out", "x"], "--lr: must be at least 0"),
    (["train", "--max-seconds", "0", "--out", "x"], "--max-seconds: must be above 0"),
    (["train", "--batch-size", "many", "--out", "x"], "--batch-size: expected a whole number"),
    (["train", "--task", "subtraction", "--out", "x"], "unknown task 'subtraction'"),
    (["train", "--device", "tpu", "--out", "x"], "'tpu' is not a device"),
    (["train"], "--out"),
    (["locality", "--per-size", "0"], "--per-size"),
    (["report", "missing.jsonl"], "no such results file"),
    (["frobnicate"], "invalid choice"),
])
def test_flag_errors_name_the_flag(capsys, argv, said):
    one_line_error(capsys, argv, said)


def test_a_prompt_over_max_tokens_is_not_read(capsys, taskfile, tmp_path):
    """A 100,000-digit question with max_tokens 1,000: the token limit at once, not after a
    minute of reading the prompt."""
    path = taskfile(f'task: addition\ninput: {{a: "{"7" * 100_000}", b: "5"}}\nlimits: {{max_tokens: 1000}}\n')
    start = time.monotonic()
    rc, out, _ = run(capsys, "solve", path, "--json", "--trajectory", str(tmp_path / "t.jsonl"))
    result = json.loads(out)
    assert rc == 1 and result["exit"] == "token_limit" and not result["correct"]
    assert time.monotonic() - start < 20


def test_version_and_python_m(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("mamba-agent ")
    r = subprocess.run([sys.executable, "-m", "mamba_agent", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("mamba-agent ")
