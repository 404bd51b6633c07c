"""TensorRows (episode rules and memory tools as tensors, one Triton kernel a step) against Episode
with the real tools, token by token: pointer memory (3, 4 and no pointers) and search memory, a
token a step and in pairs, with and without an oracle to diverge from. Without a GPU the kernel
runs in Triton's interpreter."""

import os
import random
from collections import deque

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when a kernel is defined: before it is imported
pytest.importorskip("triton")

from mamba_agent.episode import Episode, Limits  # noqa: E402
from mamba_agent.tasks import get_task  # noqa: E402
from mamba_agent.tensor_rows import FLAG_FIELDS, INT_FIELDS, TensorRows, tensor_form  # noqa: E402
from mamba_agent.tensor_rows_kernel import _advance, advance  # noqa: E402
from mamba_agent.tools.pointer import PointerMemory  # noqa: E402
from mamba_agent.tools.search import SearchMemory  # noqa: E402
from mamba_agent.vocab import ANS, END, EOS, FIND, PAD, SPECIAL, encode, pointer_command  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
POINTER_COMMANDS = [pointer_command(p, op) for p in (1, 2, 3, 4) for op in ("read", "left", "right")]
OTHERS = [SPECIAL[s] for s in ("[PAD]", "[BOS]", "[EDGE]", "[ERR]", "[VIEW]", "[/OBS]")]


class Rows:
    """What the rows need of a stepper, when the test drives `advance` itself."""

    def __init__(self, batch_size: int, pairs: bool):
        self.batch_size, self.pairs, self.device, self.static = batch_size, pairs, torch.device(DEVICE), False

    def reset_rows(self, rows) -> None:
        pass


def pointer_stream(rng: random.Random, n: int) -> list[int]:
    """Model tokens that exercise every pointer rule: commands of P1..P4 (some malformed for the
    task), digits, [ANS] (a second one is malformed), other specials (malformed), rarely [EOS]."""
    pools = [(POINTER_COMMANDS, 50), (encode("0123456789+="), 35), ([ANS], 3),
             (OTHERS + [FIND, END], 12 if rng.random() < 0.5 else 1), ([EOS], 0.15)]
    tokens, weights = zip(*pools)
    return [rng.choice(rng.choices(tokens, weights)[0]) for _ in range(n)]


def search_stream(rng: random.Random, memory: str, n: int) -> list[int]:
    """Model tokens that exercise every search rule: finds of pieces of the memory (and of what
    is written), empty ones, ones with a newline or a special token inside (which a pattern may
    hold: [ANS] is in the memory once written), the same finds over and over, thoughts with
    newlines, [ANS], malformed specials, rarely [EOS]."""
    out = []
    while len(out) < n:
        kind = rng.choices(["find", "repeat", "write", "empty", "newline", "broken", "special", "ans", "eos"],
                           [40, 2, 30, 3, 3, 4, 8, 2, 0.3])[0]
        if kind in ("find", "repeat"):  # a repeat: one find, or a cycle of two, made three times over
            i, j = rng.randrange(len(memory)), rng.randrange(len(memory))
            cycle = [[FIND, *encode(memory[k : k + rng.randint(1, 6)].replace("\n", "x")), END] for k in (i, j)]
            out += sum(cycle[: rng.randint(1, 2)] * 3, []) if kind == "repeat" else cycle[0]
        elif kind == "write":
            out += encode(rng.choice(["a001 =1\n", "+b002 1\n", "x", "7", "\n", "c003 < a001\n"]))
        elif kind == "empty":
            out += [FIND, END]
        elif kind == "newline":
            out += [FIND, *encode("1\nx"), END]
        elif kind == "broken":
            out += [FIND, *rng.choice([[ANS], encode("a0") + [rng.choice(POINTER_COMMANDS + [ANS, FIND])]]), END]
        elif kind == "special":
            out.append(rng.choice(OTHERS + POINTER_COMMANDS[:3] + [END]))
        else:
            out.append(ANS if kind == "ans" else EOS)
    return out[:n]


def drive(rows: TensorRows, episodes, streams, steps: int, pairs: bool) -> None:
    """Step `rows` and `episodes` with the same model tokens; assert that every token fed, every
    count and every exit is the same."""
    queues = [deque(ep.prompt[1:]) for ep in episodes]  # forced tokens next: the prompt, then observations
    used = [0] * len(episodes)  # model tokens each row has carried out
    for step in range(steps):
        sampled = torch.tensor([s[min(u, len(s) - 1)] for s, u in zip(streams, used)], device=DEVICE)
        advance(rows, sampled)
        fed, second, n_feed = rows.feed[0].tolist(), rows.feed[1].tolist(), rows.n_feed.tolist()
        n_tokens, exits = rows.ints[INT_FIELDS.index("n_tokens")].tolist(), rows.flags[0].tolist()
        for r, ep in enumerate(episodes):
            if ep.done:
                continue
            if queues[r]:
                want = queues[r].popleft()
            else:
                want = int(sampled[r])
                queues[r].extend(ep.act(want))
                used[r] += 1
            assert fed[r] == want, (r, step)
            assert (exits[r] != 0) == ep.done, (r, step, ep.exit)
            assert n_tokens[r] == ep.n_tokens, (r, step)
            if pairs and not ep.done:
                assert n_feed[r] == 1 + bool(queues[r]), (r, step)
                assert second[r] == (queues[r].popleft() if queues[r] else PAD), (r, step)


def check_retired(rows: TensorRows, twins, episodes) -> None:
    """After the rows' sync, each of their episodes ends as the one Episode drove itself."""
    done = []
    rows.on_done = done.append
    for r in range(rows.B):  # end every row, as a time limit would, so that all are retired
        if not episodes[r].done:
            rows.flags[0, r] = 5
    rows.sync()
    assert {id(ep) for ep in done} == {id(ep) for ep in twins}
    for twin, ep in zip(twins, episodes):
        if ep.done:
            assert (twin.exit, twin.n_tokens, twin.n_model_tokens, twin.diverged_at, twin.answer) == (
                ep.exit, ep.n_tokens, ep.n_model_tokens, ep.diverged_at, ep.answer)
            assert twin.exact == ep.exact


def loaded(episodes, pairs: bool) -> TensorRows:
    rows = TensorRows(Rows(len(episodes), pairs), episodes, tensor_form(episodes[0]))
    rows.sync()  # takes every episode into a row
    return rows


@pytest.mark.parametrize("seed, pairs, n_pointers", [(0, False, 3), (2, True, 3), (4, True, 4), (5, False, 0)])
def test_pointer_rows_as_episode(seed, pairs, n_pointers):
    rng = random.Random(seed)
    task = get_task("addition")
    B, steps, max_tokens = 10, 220, 200
    limits = Limits(max_format_errors=rng.choice([3, 20]))
    problems = [task.random_problem(rng, rng.randint(1, 6)) for _ in range(B)]
    streams = [pointer_stream(rng, steps) for _ in range(B)]
    # An oracle for some rows, which the stream leaves at a random token (or never), with and
    # without stopping there.
    oracles = [None if r % 3 == 0 else streams[r][: rng.randint(0, 40)] + [EOS] for r in range(B)]

    def episodes():
        tools = (lambda p: [PointerMemory(p.prompt[1:], n_pointers)]) if n_pointers else (lambda p: [])
        return [Episode(p.prompt, tools(p), max_tokens, limits=limits, expected=o, stop_at_divergence=r % 2 == 0)
                for r, (p, o) in enumerate(zip(problems, oracles))]

    twins, mine = episodes(), episodes()
    rows = loaded(twins, pairs)
    drive(rows, mine, streams, steps, pairs)
    assert len({ep.exit for ep in mine}) >= 3 and any(ep.diverged_at is not None for ep in mine)
    for r, ep in enumerate(mine):
        if n_pointers:
            tape = ep.tools[0].tape
            assert rows.tape[r, : len(tape)].tolist() == tape
    check_retired(rows, twins, mine)


@pytest.mark.parametrize("seed, pairs", [(0, False), (1, True)])
def test_search_rows_as_episode(seed, pairs):
    rng = random.Random(seed)
    task = get_task("logical_graph")
    B, steps = 4, 180
    problems = [task.random_problem(rng, rng.randint(1, 4)) for _ in range(B)]
    streams = [search_stream(rng, p.input["program"] + "\n", steps) for p in problems]
    limits = Limits(max_format_errors=5, max_repeats=2 + seed % 2)
    max_tokens = [len(p.prompt) + (80 if r % 2 else 600) for r, p in enumerate(problems)]  # half reach it

    def episodes():
        return [Episode(p.prompt, task.tools(p), m, limits=limits, expected=s[:50] if r == 1 else None)
                for r, (p, m, s) in enumerate(zip(problems, max_tokens, streams))]

    twins, mine = episodes(), episodes()
    rows = loaded(twins, pairs)
    drive(rows, mine, streams, steps, pairs)
    assert any(ep.done for ep in mine)
    for r, ep in enumerate(mine):
        memory = [ord(c) for c in ep.tools[0]._text + "".join(ep.tools[0]._pending)]
        assert rows.tape[r, : len(memory)].tolist() == memory
    check_retired(rows, twins, mine)


def test_a_find_answers_every_matching_line_once():
    """Lines matched several times, the unfinished last line, a pattern at the very end."""
    memory = encode("ab ab\nxab\n\nb\nab")
    rows = loaded([Episode([0, *memory], [SearchMemory(memory)], 1000)], pairs=False)
    rows.ints[INT_FIELDS.index("fed")] = len(memory) + 1  # the prompt read
    for pattern, answer in (("ab", "ab ab\nxab\nab\n"), ("b\n", ""), ("zz", ""), ("b", "ab ab\nxab\nb\nab\n")):
        for t in [FIND, *encode(pattern), END]:
            advance(rows, torch.tensor([t], device=DEVICE))
        n = rows.ints[INT_FIELDS.index("obs_len")].item()
        assert rows.obs[0, :n].tolist() == SearchMemory(memory).command(FIND, encode(pattern))
        assert rows.obs[0, : n - 1].tolist() == encode(answer)
        rows.ints[INT_FIELDS.index("obs_pos")] = n  # the observation read


def test_the_same_finds_over_and_over_end_the_episode():
    """Episode's repeat rule: a cycle of one or two finds with the same answers, max_repeats times
    in a row, ends the row as `repeating`; a thought between them that changes an answer breaks
    the cycle."""
    task = get_task("logical_graph")
    problem = task.random_problem(random.Random(0), 3)
    name = problem.input["program"][:4]
    one, two = [FIND, *encode(name), END], [FIND, *encode(" = "), END]
    cases = [one * 3, (one + two) * 3, one * 2 + encode(name + "\n") + one * 2, (one + two) * 2 + one]
    for limits in (Limits(), Limits(max_repeats=2)):
        episodes = [Episode(problem.prompt, task.tools(problem), 2000, limits=limits) for _ in cases]
        mine = [Episode(problem.prompt, task.tools(problem), 2000, limits=limits) for _ in cases]
        drive(loaded(episodes, pairs=False), mine, [c + [ANS] * 30 for c in cases], 500, pairs=False)
        twice = limits.max_repeats == 2
        assert [ep.exit for ep in mine][:3] == ["repeating", "repeating", "repeating" if twice else "format_errors"]
        assert (mine[3].exit == "repeating") == twice


def test_the_kernel_takes_the_fields_in_their_order():
    names = _advance.arg_names
    start = names.index("prompt_len_ptr")
    assert names[start : start + len(INT_FIELDS) + len(FLAG_FIELDS)] == [f"{f}_ptr" for f in INT_FIELDS + FLAG_FIELDS]


def test_tensor_forms():
    rng = random.Random(0)
    forms = {name: tensor_form(get_task(name).episode(get_task(name).random_problem(rng, 2)))
             for name in ("addition", "multiplication-2", "hanoi", "logical_graph", "addition-nocot",
                          "addition-cot-notool", "addition-calculator", "code_debug")}
    assert forms == {"addition": (0, 3), "multiplication-2": (0, 4), "hanoi": (0, 4), "logical_graph": (1, 0),
                     "addition-nocot": (0, 0), "addition-cot-notool": None, "addition-calculator": None,
                     "code_debug": None}


def solve_both(task_name: str, sizes, tmp_path, checkpoint: str, refill: bool = True):
    """The shipped model on the same problems with the tools in Python and as tensors (on the
    CPU: the NumPy step, the kernel in Triton's interpreter; on a GPU the steps the runtime picks,
    compiled): every episode ends the same, the watched ones (a trajectory file each) write the
    same file."""
    from mamba_agent.checkpoint import load_checkpoint
    from mamba_agent.runtime import run_episodes
    from mamba_agent.trajectory import TrajectoryWriter, read_trajectory

    task = get_task(task_name)
    policy, _ = load_checkpoint(checkpoint, device=DEVICE)
    rng = random.Random(7)
    problems = [task.random_problem(rng, n) for n in sizes]
    oracles = [task.oracle(p).model_tokens() for p in problems]
    oracles[0] = oracles[0][:-2] + [ANS, EOS]  # an oracle the model leaves near its end

    def episodes(rows: str):
        return [task.episode(p, expected=o, stop_at_divergence=False,
                             writer=TrajectoryWriter(tmp_path / f"{rows}-{i}.jsonl", {}) if i < 2 else None)
                for i, (p, o) in enumerate(zip(problems, oracles))]

    runs = {}
    for rows in ("python", "tensor"):
        runs[rows] = eps = episodes(rows)
        run_episodes(policy, eps, batch_size=len(eps) - refill, rows=rows, device=DEVICE)  # a row refilled
        for p, ep in zip(problems, eps):
            ep.close(task.check(p, ep.answer))
    for a, b in zip(*runs.values()):
        assert (a.exit, a.n_tokens, a.n_model_tokens, a.diverged_at, a.answer, a.exact) == (
            b.exit, b.n_tokens, b.n_model_tokens, b.diverged_at, b.answer, b.exact)
    assert [ep.exact for ep in runs["tensor"]] == [False] + [True] * (len(sizes) - 1)
    for i in range(2):
        (_, a, end_a), (_, b, end_b) = (read_trajectory(tmp_path / f"{rows}-{i}.jsonl") for rows in runs)
        assert (a.tokens, a.roles) == (b.tokens, b.roles)
        assert {**end_a, "seconds": 0} == {**end_b, "seconds": 0}


def test_addition_on_tensor_rows_as_on_python_rows(tmp_path):
    solve_both("addition", [1, 3, 6, 2, 9], tmp_path, "builtin:addition-mamba")


@pytest.mark.slow
def test_logical_graph_and_hanoi_on_tensor_rows_as_on_python_rows(tmp_path):
    solve_both("logical_graph", [1, 1], tmp_path / "lg", "builtin:logical_graph-mamba", refill=False)
    solve_both("hanoi", [2, 1], tmp_path / "hanoi", "builtin:hanoi-mamba", refill=False)


@pytest.mark.slow
def test_shipped_model_solves_in_pairs_with_an_8bit_state():
    """Forced tokens read in pairs, and the state stored in 8 bits (fp8 e4m3, what the split
    step keeps given a float8_e4m3fn state, rounded once a step; its fp16 update is finer than
    that), lose no addition: the reference pair step with its state rounded after each step,
    through the tensor rows. (1,000 digits: eval/README.md.)"""
    from mamba_agent.checkpoint import load_checkpoint
    from mamba_agent.runtime import run
    from mamba_agent.steppers import Stepper
    from tests.pair_reference import step_pair

    class RoundedPairs(Stepper):
        pairs = True

        def greedy(self, feed, n_feed=None):
            logits = step_pair(self.policy, feed, n_feed, self.state)
            for s in (self.state.conv, self.state.ssm):
                s.copy_(s.to(torch.float8_e4m3fn).float())
            return logits.argmax(-1)

    task = get_task("addition")
    policy, _ = load_checkpoint("builtin:addition-mamba", device=DEVICE)
    problems = [task.random_problem(random.Random(4), n) for n in (2, 9, 17)]
    episodes = [task.episode(p, expected=task.oracle_tokens(p)) for p in problems]
    with torch.no_grad():
        run(TensorRows(RoundedPairs(policy, len(problems)), episodes, tensor_form(episodes[0])))
    assert all(ep.exact for ep in episodes)
    assert [ep.n_tokens for ep in episodes] == [len(task.oracle(p).tokens) for p in problems]


@pytest.mark.parametrize("task_name, checkpoint, size, forms", [
    ("addition", "builtin:addition-mamba", 12, ["tensor", "python", "tensor"]),
    ("logical_graph", "builtin:logical_graph-mamba", 3, ["python", "tensor", "python"]),
])
def test_saved_on_one_row_form_resumes_on_the_other(task_name, checkpoint, size, forms, tmp_path):
    """An episode stopped (after a run of steps), saved as the episode checkpoints save it and
    resumed in fresh objects, each piece on a row form of `forms` in turn: the tokens, answer and
    trajectory file of one that ran through on Python rows."""
    from mamba_agent.checkpoint import load_checkpoint
    from mamba_agent.runtime import Sampler, run_episodes
    from mamba_agent.saved_episode import EpisodeRun, load, restore
    from mamba_agent.trajectory import TrajectoryWriter

    task = get_task(task_name)
    policy, meta = load_checkpoint(checkpoint, device=DEVICE)
    problem = task.random_problem(random.Random(5), size)
    whole = task.episode(problem, writer=TrajectoryWriter(tmp_path / "whole.jsonl", {}))
    run_episodes(policy, [whole], rows="python", device=DEVICE)
    whole.close(task.check(problem, whole.answer))
    ep, saved, steps, at = task.episode(problem, writer=TrajectoryWriter(tmp_path / "pieces.jsonl", {})), None, [0], [0]
    for i, rows in enumerate(forms):
        last = i == len(forms) - 1

        def progress(loop, run=EpisodeRun(task, problem, "test", meta, ep, Sampler(), Limits(), ep.max_tokens)):
            steps[0] += 1
            if not last and steps[0] % 2 == 0 and not run.episode.done:  # every other run of steps
                run.save(tmp_path / "ep", loop)
                return True
            return False

        run_episodes(policy, [ep], on_progress=progress, progress_seconds=-1, resume=saved, rows=rows, device=DEVICE)
        if last:
            break
        ep.writer._file.close()
        record = load(tmp_path / "ep")
        assert record["episode"]["n_tokens"] > at[-1]  # this piece stopped and saved, further on
        at.append(record["episode"]["n_tokens"])
        ep = task.episode(problem)
        saved, _ = restore(record, task, ep)
    ep.close(task.check(problem, ep.answer))
    assert len(at) == len(forms)
    assert (ep.exit, ep.n_tokens, ep.answer) == (whole.exit, whole.n_tokens, whole.answer)

    def lines(path):
        return [line for line in path.read_text().splitlines() if '"end"' not in line]
    assert lines(tmp_path / "pieces.jsonl") == lines(tmp_path / "whole.jsonl")
