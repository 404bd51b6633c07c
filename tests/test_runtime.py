import json
import random

import pytest
import torch

from mamba_agent.episode import FINISHED, FORMAT_ERRORS, TOKEN_LIMIT, Limits
from mamba_agent.policies import build_policy
from mamba_agent.runtime import Sampler, run_episodes
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import COMMAND, OBSERVATION, Trajectory, TrajectoryWriter, read_trajectory
from mamba_agent.vocab import ANS, EDGE, END, EOS, ERR, FIND, RUN, VIEW, VOCAB_SIZE, decode, encode, pointer_command
from mamba_agent.tools.pointer import PointerMemory
from tests.scripted import ScriptedPolicy

task = get_task("addition")


def test_pointer_memory_protocol():
    tape = PointerMemory(encode("12+3="), n_pointers=2)
    read1, left1, right1 = (pointer_command(1, op) for op in ("read", "left", "right"))
    assert tape.command(read1) == [ord("1")]
    assert tape.command(left1) == [] and tape.command(read1) == [EDGE]
    assert tape.command(left1) == [] and tape.command(read1) == [EDGE]  # the edge is a wall
    assert tape.command(right1) == [] and tape.command(read1) == [ord("1")]
    for _ in range(10):
        tape.command(pointer_command(2, "right"))
    assert tape.command(pointer_command(2, "read")) == [EDGE]  # past the right end
    tape.write(ord("7"))  # thoughts are appended: the cell past the end now holds them
    assert tape.command(pointer_command(2, "read")) == [ord("7")]


def test_malformed_commands_are_answered_not_raised():
    p = task.problem({"a": "12", "b": "3"})
    ep = task.episode(p, keep=True, limits=Limits(max_format_errors=3))
    assert ep.act(EDGE) == [ERR]  # a token only tools produce
    assert ep.act(pointer_command(4, "read")) == [ERR]  # a pointer addition does not have
    assert ep.act(FIND) == [ERR]  # a tool addition does not have
    assert ep.exit == FORMAT_ERRORS
    roles = ep.trajectory.roles
    assert roles.count(COMMAND) == 3 and roles.count(OBSERVATION) == 3


def test_a_special_token_inside_a_text_argument_is_an_error_observation():
    """`[VIEW]m[P1.read][END]` (it happened with the shipped code_debug model): the file tool
    answers an error, nothing raises, and the next command works."""
    cd = get_task("code_debug")
    ep = cd.episode(cd.problem({"size": 3, "seed": 1}), keep=True)
    for t in (VIEW, ord("m"), pointer_command(1, "read")):
        assert ep.act(t) == []
    assert decode(ep.act(END), specials=False).startswith("error: the argument holds a special token")
    for t in [RUN, pointer_command(2, "left")]:
        assert ep.act(t) == []
    assert decode(ep.act(END), specials=False).startswith("error: the argument holds a special token")
    for t in [VIEW, *encode("main.py")]:
        assert ep.act(t) == []
    assert decode(ep.act(END), specials=False).startswith("[main.py lines 1-")
    assert not ep.done


def test_a_repeated_view_and_run_round_ends_the_episode():
    """The shipped code model's one failure mode at 32 functions: view, run, view, run, ... with
    nothing changing. Three identical rounds end it as `repeating`; rounds that differ do not."""
    cd = get_task("code_debug")
    ep = cd.episode(cd.problem({"size": 3, "seed": 1}), keep=True)

    def call(command, text):
        for t in [command, *encode(text)]:
            ep.act(t)
        ep.act(END)

    for round_ in range(3):
        assert not ep.done
        call(VIEW, "main.py")
        call(RUN, "python3 main.py")
    assert ep.exit == "repeating"
    ep = cd.episode(cd.problem({"size": 3, "seed": 1}), keep=True)
    for k in range(1, 8):  # views of different windows: each answer differs
        call(VIEW, f"main.py:{k}")
        call(RUN, "python3 main.py")
    assert not ep.done


def test_second_ans_is_malformed_and_a_good_token_resets_the_count():
    ep = task.episode(task.problem({"a": "1", "b": "1"}), keep=True, limits=Limits(max_format_errors=2))
    assert ep.act(ANS) == []
    assert ep.act(ANS) == [ERR]
    assert ep.act(ord("5")) == []  # an output token
    assert ep.act(ANS) == [ERR] and not ep.done
    assert ep.answer == "5"


def test_token_limit_ends_the_episode():
    ep = task.episode(task.problem({"a": "1", "b": "1"}), max_tokens=12)
    while not ep.done:
        ep.act(pointer_command(1, "read"))
    assert ep.exit == TOKEN_LIMIT and ep.n_tokens >= 12


def test_untrained_policy_runs_to_a_limit_without_crashing():
    """Random weights emit garbage commands: the runtime records and answers them."""
    torch.manual_seed(0)
    policy = build_policy({"kind": "mamba", "vocab_size": VOCAB_SIZE, "d_model": 32, "n_layer": 1}).eval()
    problems = [task.random_problem(random.Random(i), 3) for i in range(3)]
    episodes = [task.episode(p, max_tokens=300) for p in problems]
    run_episodes(policy, episodes, Sampler(temperature=1.0, seed=0))
    assert all(ep.done for ep in episodes)
    assert {ep.exit for ep in episodes} <= {FINISHED, TOKEN_LIMIT, FORMAT_ERRORS}


def test_trajectory_streams_to_jsonl_and_reads_back(tmp_path):
    p = task.problem({"a": "905", "b": "96"})
    oracle = task.oracle(p)
    path = tmp_path / "t.jsonl"
    ep = task.episode(p, writer=TrajectoryWriter(path, {"task": "addition"}), expected=oracle.model_tokens())
    run_episodes(ScriptedPolicy([oracle]), [ep])
    end = ep.close(task.check(p, ep.answer))
    header, traj, end_read = read_trajectory(path)
    assert header["task"] == "addition" and header["version"] == 1
    assert traj.tokens == oracle.tokens and traj.roles == oracle.roles
    assert end_read == end and end["correct"] and end["answer"] == "1001" and end["exit"] == FINISHED
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[1]["role"] == "input" and lines[1]["text"] == "[BOS]905+96="


def test_sampler_is_seeded_and_greedy_is_argmax():
    logits = torch.randn(4, VOCAB_SIZE)
    assert Sampler(0.0)(logits) == logits.argmax(-1).tolist()
    assert Sampler(1.0, seed=3)(logits) == Sampler(1.0, seed=3)(logits)
    with pytest.raises(ValueError):
        Sampler(-1.0)


def test_vocab_roundtrip():
    assert decode(encode("12+3=") + [ANS, EOS]) == "12+3=[ANS][EOS]"
    assert decode([pointer_command(2, "left")]) == "[P2.left]"
    assert VOCAB_SIZE % 8 == 0


def test_trajectory_model_tokens():
    t = Trajectory(tokens=[1, 2, 3, 4], roles=[0, 1, 3, 4])
    assert t.model_tokens() == [2, 4]


@pytest.mark.parametrize("kind", ["mamba", "transformer", "gru"])
def test_rows_refill_and_every_episode_decodes_as_if_alone(kind):
    """7 episodes through 3 rows: Mamba and the GRU hand a finished episode's row to the next at
    once, the Transformer (a cache shared by every row) refills in waves. Either way each episode's
    trajectory is the one it gets decoding alone, and on_done sees each exactly once."""
    torch.manual_seed(0)
    policy = build_policy({"kind": kind, "vocab_size": VOCAB_SIZE, "d_model": 32, "n_layer": 2}).eval()
    problems = [task.random_problem(random.Random(i), 1 + i % 3) for i in range(7)]

    def episodes():  # budgets differ so that episodes end at different steps
        return [task.episode(p, keep=True, max_tokens=len(p.prompt) + 5 + 7 * i) for i, p in enumerate(problems)]

    alone = episodes()
    for ep in alone:
        run_episodes(policy, [ep])
    together, finished = episodes(), []
    run_episodes(policy, iter(together), batch_size=3, on_done=finished.append)
    assert sorted(map(id, finished)) == sorted(map(id, together))
    for a, b in zip(alone, together):
        assert b.done and b.trajectory.tokens == a.trajectory.tokens


def test_blocking_tool_calls_of_a_step_run_at_once():
    """Four episodes reach `[RUN]...[END]` at the same step: their calls must be in flight
    together (a barrier of 4 inside the tool breaks, and the call raises, if they are not)."""
    import threading

    from mamba_agent.episode import Episode
    from mamba_agent.tools import Tool
    from mamba_agent.vocab import BOS, END, OBS_END, RUN

    class Slow(Tool):
        argument_commands = frozenset({RUN})
        blocking = True

        def __init__(self, barrier=None):
            self.barrier = barrier

        def command(self, token, argument=None):
            if self.barrier is not None:
                self.barrier.wait(timeout=10)
            return encode("ok") + [OBS_END]

    def episode(tool, keep=False):
        return Episode([BOS], [tool], max_tokens=50, keep=keep)

    script = episode(Slow(), keep=True)
    for t in [RUN, ord("x"), END, EOS]:
        script.act(t)
    barrier = threading.Barrier(4)
    episodes = [episode(Slow(barrier), keep=True) for _ in range(4)]
    run_episodes(ScriptedPolicy([script.trajectory] * 4), episodes)
    assert all(ep.exit == FINISHED and ep.trajectory.tokens == script.trajectory.tokens for ep in episodes)


def test_a_tool_that_raises_leaves_no_threads_behind():
    """Two blocking calls go out on the runtime's thread pool and the tool raises: the error
    reaches the caller, and the pool's threads are shut down, not left idle."""
    import threading

    from mamba_agent.episode import Episode
    from mamba_agent.tools import Tool
    from mamba_agent.vocab import BOS, END, OBS_END, RUN

    class Broken(Tool):
        argument_commands = frozenset({RUN})
        blocking = True

        def command(self, token, argument=None):
            raise RuntimeError("the sandbox is gone")

    class Answers(Tool):
        argument_commands = frozenset({RUN})

        def command(self, token, argument=None):
            return [OBS_END]

    script = Episode([BOS], [Answers()], max_tokens=50, keep=True)
    for t in [RUN, ord("x"), END, EOS]:
        script.act(t)
    threads = threading.active_count()
    with pytest.raises(RuntimeError, match="sandbox is gone"):
        run_episodes(ScriptedPolicy([script.trajectory] * 2), [Episode([BOS], [Broken()], max_tokens=50) for _ in range(2)])
    assert threading.active_count() == threads


def test_an_episode_that_cannot_finish_still_ends_its_trajectory(tmp_path):
    """A tool raises mid-episode: every live episode's trajectory file gets its `end` line, with
    exit `error` and the exception, and the error reaches the caller; Ctrl-C reads `interrupted`."""
    from mamba_agent.episode import ERROR, INTERRUPTED, Episode
    from mamba_agent.tools import Tool
    from mamba_agent.vocab import BOS, END, RUN

    class Broken(Tool):
        argument_commands = frozenset({RUN})
        blocking = True

        def __init__(self, error):
            self.error = error

        def command(self, token, argument=None):
            raise self.error

    script = Episode([BOS], [], max_tokens=50, keep=True)
    for t in [RUN, ord("x"), END, EOS]:
        script.act(t)
    for error, reason in [(OSError(5, "the engine is gone"), ERROR), (KeyboardInterrupt(), INTERRUPTED)]:
        paths = [tmp_path / f"{reason}-{i}.jsonl" for i in range(2)]
        episodes = [Episode([BOS], [Broken(error)], max_tokens=50, writer=TrajectoryWriter(p, {}))
                    for p in paths]
        with pytest.raises(type(error)):
            run_episodes(ScriptedPolicy([script.trajectory] * 2), episodes)
        for path in paths:
            _, _, end = read_trajectory(path)
            assert end is not None and end["exit"] == reason and end["correct"] is None
        assert ERROR != reason or "engine is gone" in end["error"]
        assert episodes[0].close(True)["exit"] == reason  # closing again changes nothing


def test_the_runtime_needs_no_triton_on_the_cpu():
    """A CPU install has no Triton (only the test extra brings it): the runtime, with tensor
    rows refused there and the tools in Python by default, runs without it."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["triton"] = None  # `import triton` raises ImportError
import os
os.environ.pop("TRITON_INTERPRET", None)
from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.runtime import plan, run_episodes
from mamba_agent.steppers import ChoiceError
from mamba_agent.tasks import get_task
task = get_task("addition")
policy, _ = load_checkpoint("builtin:addition-mamba")
episode = task.episode(task.problem({"a": "12", "b": "34"}))
assert plan(policy, episode, "cpu", 0.0) == ("python", "numpy")
try:
    plan(policy, episode, "cpu", 0.0, rows="tensor")
    raise SystemExit("tensor rows were not refused")
except ChoiceError as e:
    assert "CUDA" in str(e)
run_episodes(policy, [episode])
assert episode.answer == "46", episode.answer
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
