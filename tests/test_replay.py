"""`mamba-agent replay`: recorded trajectories checked against fresh tools, and bad files refused."""

import json
from pathlib import Path

import pytest

from mamba_agent.cli import main
from mamba_agent.replay import replay
from mamba_agent.taskfile import load_taskfile
from mamba_agent.tasks import get_task
from mamba_agent.episode import Limits
from mamba_agent.trajectory import TrajectoryWriter, read_trajectory
from mamba_agent.vocab import EDGE, ERR, OBS_END, encode
from tests.scripted import record

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("tasks", "examples").glob("*.yaml"))


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_lines(path, lines: list[dict]) -> str:
    Path(path).write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_oracle_trajectory_of_every_example_replays(tmp_path, example):
    tf, problem = load_taskfile(example)
    path = tmp_path / "t.jsonl"
    end = record(get_task(tf.task), problem, path)
    same, message = replay(path)
    assert same and end["correct"], message
    assert f"{end['tokens']:,} tokens replayed through fresh {tf.task} tools" in message


def test_solve_trajectory_replays_and_a_tampered_one_names_the_first_difference(tmp_path, capsys):
    task_file = tmp_path / "task.yaml"
    task_file.write_text('task: addition\ninput: {a: "98765432109876", b: "1234567"}\n')
    path = tmp_path / "solve.jsonl"
    assert main(["solve", str(task_file), "--json", "--trajectory", str(path)]) == 0
    capsys.readouterr()
    assert main(["replay", str(path)]) == 0
    assert "the answer and the verdict match" in capsys.readouterr().out

    lines = lines_of(path)
    k = next(k for k, x in enumerate(lines) if x.get("role") == "observation" and x["tokens"] == encode("4"))
    first = sum(len(x.get("tokens", [])) for x in lines[1:k])  # the token index of that observation
    lines[k]["tokens"] = encode("5")
    assert main(["replay", write_lines(tmp_path / "obs.jsonl", lines)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"obs.jsonl: token {first:,}: recorded observation '5', the replay gives observation '4'"
                        f" (after command {lines[k - 1]['text']!r})")

    lines = lines_of(path)
    lines[-1]["end"]["correct"] = False
    assert main(["replay", write_lines(tmp_path / "verdict.jsonl", lines)]) == 1
    assert "verdict: recorded correct=false, the checker says correct=true" in capsys.readouterr().err

    lines = lines_of(path)
    lines[-1]["end"]["answer"] = "1"
    assert main(["replay", write_lines(tmp_path / "answer.jsonl", lines)]) == 1
    assert "end line: answer is '1'" in capsys.readouterr().err


def test_a_model_token_recorded_as_an_observation_is_a_difference(tmp_path):
    task = get_task("hanoi")
    path = tmp_path / "t.jsonl"
    record(task, task.problem({"disks": [3, 2, 1]}), path)
    lines = lines_of(path)
    k = next(k for k, x in enumerate(lines) if x.get("role") == "thought")
    lines[k]["role"] = "observation"
    same, message = replay(write_lines(path, lines))
    assert not same and "recorded observation '-'" in message and message.endswith("the replay gives no more observation (the model's turn)")


def test_an_evaluated_episode_records_where_it_left_the_oracle_and_replays_against_it(tmp_path):
    task = get_task("addition")
    problem = task.problem({"a": "905", "b": "96"})
    expected = task.oracle(problem).model_tokens()
    path = tmp_path / "t.jsonl"
    end = record(task, problem, path, expected=expected, wrong_at=20)  # ends there: `diverged`
    header, traj, end_read = read_trajectory(path)
    assert end_read == end and end["exit"] == "diverged" and end["diverged_at"] == 20
    assert traj.tokens[-1] == encode("7")[0] and end["oracle_token"] == "[P2.read]"
    assert replay(path)[0]
    lines = lines_of(path)
    lines[-1]["end"]["diverged_at"] = 3
    same, message = replay(write_lines(path, lines))
    assert not same and message.endswith("end line: diverged_at is 3, the trajectory's is 20")

    # Run on past its divergence (what eval does by default): the same token, then the oracle's.
    end = record(task, problem, path, expected=expected, wrong_at=20, stop_at_divergence=False)
    assert end["exit"] == "finished" and end["diverged_at"] == 20 and replay(path)[0]
    end = record(task, problem, path, expected=expected)
    assert end["diverged_at"] is None and "oracle_token" not in end and replay(path)[0]


def test_exits_a_limit_decided_replay_and_a_wrong_exit_is_a_difference(tmp_path):
    task = get_task("addition")
    problem = task.problem({"a": "905", "b": "96"})
    header = {"task": task.name, "input": problem.input}
    ep = task.episode(problem, max_tokens=60, writer=TrajectoryWriter(tmp_path / "limit.jsonl", header))
    for token in task.oracle(problem).model_tokens():
        ep.act(token)
        if ep.done:
            break
    assert ep.close(False)["exit"] == "token_limit" and replay(tmp_path / "limit.jsonl")[0]
    ep = task.episode(problem, limits=Limits(max_format_errors=3), writer=TrajectoryWriter(tmp_path / "errors.jsonl", header))
    for token in [EDGE, ERR, OBS_END]:  # tokens only tools produce
        ep.act(token)
    assert ep.close(False)["exit"] == "format_errors" and replay(tmp_path / "errors.jsonl")[0]

    record(task, problem, tmp_path / "t.jsonl")
    lines = lines_of(tmp_path / "t.jsonl")
    for exit in ("token_limit", "interrupted"):
        lines[-1]["end"]["exit"] = exit
        same, message = replay(write_lines(tmp_path / "t.jsonl", lines))
        assert not same and message.endswith(f"exit: recorded {exit}, the replay ends finished")
    cut = lines[:12]  # stopped (a signal, a limit of time) before the answer
    cut.append({"end": {"exit": "interrupted", "answer": "", "correct": None,
                        "tokens": sum(len(x["tokens"]) for x in cut[1:])}})
    assert replay(write_lines(tmp_path / "t.jsonl", cut))[0]


def test_a_truncated_file_replays_what_is_there_then_says_so(tmp_path, capsys):
    task = get_task("hanoi")
    path = tmp_path / "t.jsonl"
    record(task, task.problem({"disks": [3, 2, 1]}), path)
    text = path.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(text[:40]) + text[40][:15])  # a crash in the middle of a line
    header, traj, end = read_trajectory(cut)
    assert end is None and len(traj) == sum(len(json.loads(x)["tokens"]) for x in text[1:40])
    assert main(["replay", str(cut)]) == 2
    err = capsys.readouterr().err
    assert f"truncated (no end line: the run did not finish); its {len(traj):,} tokens replay identically" in err

    lines = [json.loads(x) for x in text[:40]]
    k = next(k for k in range(39, 0, -1) if lines[k]["role"] == "observation")
    lines[k]["tokens"] = encode("x")
    assert main(["replay", write_lines(cut, lines)]) == 1  # a difference outranks the truncation


HEADER = {"format": "mamba-agent-trajectory", "version": 1, "vocab_version": 1, "task": "addition",
          "input": {"a": "12", "b": "3"}}


@pytest.mark.parametrize("content, expected", [
    ("", "empty file"),
    ("hello\n", "line 1: not JSON"),
    ('{"a": 1}\n', "not a mamba-agent trajectory"),
    ("[1, 2]\n", "line 1: not a JSON object"),
    (json.dumps({**HEADER, "version": 9}) + "\n", "trajectory version 9 (vocabulary 1); this mamba-agent reads version 1"),
    (json.dumps({**HEADER, "task": "chess"}) + "\n", "header: unknown task 'chess'; valid tasks: addition"),
    (json.dumps({**HEADER, "input": {"a": "x1", "b": "3"}}) + "\n", "header input: "),
    (json.dumps({k: v for k, v in HEADER.items() if k != "input"}) + "\n", "header has no `input` object"),
    (json.dumps(HEADER) + '\n{"role": "musing", "tokens": [1]}\n', "line 2: role 'musing' is none of input, thought"),
    (json.dumps(HEADER) + '\n{"role": "input", "tokens": [9999]}\n', "line 2: tokens must be a list of token ids 0..279"),
    (json.dumps(HEADER) + '\n{"end": {"exit": "finished"}}\n{"role": "input", "tokens": [1]}\n', "line 3: a line after the end line"),
    (json.dumps(HEADER) + "\nnot json\n" + '{"end": {}}\n', "line 2: not JSON"),
])
def test_bad_files_are_one_line_and_exit_2(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    for command in ("replay", "view"):
        if command == "view" and "header" in expected:
            continue  # the page shows any header and end line; only replay needs them to mean something
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"mamba-agent {command}: error: {path}: " in err and expected in err, err


def test_missing_file_folder_and_binary_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00")
    for path, why in [(tmp_path / "none.jsonl", "No such file"), (tmp_path, "Is a directory"),
                      (tmp_path / "binary.jsonl", "not UTF-8 text")]:
        assert main(["replay", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err
