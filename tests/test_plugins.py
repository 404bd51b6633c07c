"""Plugins: a task or a policy from outside the package, found as module:Name or through an
installed entry point, works like a built-in one; a broken one is one line naming it and what is
wrong. The example plugin (examples/plugin) is imported from its folder here; installed with pip
and run end to end through the CLI: tests/test_plugin_example.py."""

import json
import random
import textwrap
from pathlib import Path

import pytest
import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.cli import main
from mamba_agent.plugins import PluginError
from mamba_agent.policies import build_policy, policy_classes
from mamba_agent.tasks import get_task
from mamba_agent.vocab import VOCAB_SIZE
from tests.scripted import replay_oracles

EXAMPLE = Path(__file__).parent.parent / "examples" / "plugin"
SORT, WINDOW = "mamba_sort.task:Sort", "mamba_sort.policy:WindowPolicy"


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Writes a module of that name and source into a folder on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


def register(tmp_path, monkeypatch, group: str, name: str, reference: str) -> None:
    """An installed distribution whose entry point `name` in `group` is `reference`: the
    metadata folder pip writes, which importlib.metadata reads from any folder on sys.path."""
    dist = tmp_path / "site" / "fake_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {reference}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_the_example_task_is_found_as_module_name_and_its_oracle_replays(example):
    task = get_task(SORT)
    assert task.name == SORT  # known by the name it was found under
    rng = random.Random(0)
    problems = [task.random_problem(rng, n) for n in (1, 7, 40, 300)] + task.edge_cases(20)
    for oracle, episode in replay_oracles(task, problems):
        assert episode.answer == "".join(sorted(episode.answer))
    assert task.problem({"text": "banana"}).reference == "aaabnn"
    assert not task.check(task.problem({"text": "ab"}), "ba")


def test_an_entry_point_names_a_plugin_task_and_policy(example, tmp_path, monkeypatch):
    register(tmp_path, monkeypatch, "mamba_agent.tasks", "sort", SORT)
    assert get_task("sort").name == "sort"
    with pytest.raises(ValueError, match="installed plugins: sort; or module:Name"):
        get_task("sorting")


def test_train_and_load_a_plugin_task_and_policy_by_module_name(example, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--task", SORT, "--policy", WINDOW, "--set", "k=3", "--steps", "3", "--batch-size", "4",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    policy, meta = load_checkpoint(out)
    assert meta["task"] == SORT and meta["task_version"] == 1
    assert meta["policy"]["kind"] == WINDOW and policy.config.k == 3


def test_the_example_policy_steps_as_it_runs_forward(example):
    torch.manual_seed(0)
    policy = build_policy({"kind": WINDOW, "vocab_size": VOCAB_SIZE, "k": 3}).eval()
    tokens = torch.randint(0, VOCAB_SIZE, (2, 9))
    full = policy(tokens)  # (2, 9, V)
    state = policy.init_state(2)
    head = policy(tokens[:, :4], state)
    stepped = [policy.step(tokens[:, t], state) for t in range(4, 9)]
    assert torch.allclose(torch.cat([head, torch.stack(stepped, 1)], 1), full, atol=1e-5)
    changed = tokens.clone()
    changed[:, :6] = 7  # outside the last 3 tokens of the end: the last logits cannot change
    assert torch.equal(policy(changed)[:, -1], full[:, -1]) and not torch.equal(policy(changed)[:, 5], full[:, 5])


@pytest.mark.parametrize("source, said", [
    ("raise ImportError('no numpyy here')", "cannot import {m} (ImportError: no numpyy here)"),
    ("X = 1", "{m} has no 'Task'"),
    ("class Task:\n    pass", "Task is not a subclass of mamba_agent.tasks.Task"),
    ("from mamba_agent.tasks import Task as T\nclass Task(T):\n    def problem(self, input): pass",
     "Task does not define check, max_tokens, random_problem, solve, tools, training_problem"),
])
def test_a_broken_task_plugin_is_one_line_naming_it(module, source, said, capsys):
    name = module(f"broken_{abs(hash(source))}", source)
    with pytest.raises(PluginError) as e:
        get_task(f"{name}:Task")
    assert str(e.value).startswith(f"task plugin '{name}:Task': ") and said.format(m=name) in str(e.value)
    assert main(["locality", "--task", f"{name}:Task"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mamba-agent locality: error: --task: task plugin")


SORT_LIKE = """
from mamba_sort.task import Sort
from mamba_agent.tools import Tool
from mamba_agent.tools.pointer import PointerMemory

class Bad(Sort):
    {body}
"""


@pytest.mark.parametrize("body, said", [
    ("version = 0", "Bad.version must be a whole number >= 1, got 0"),
    ("max_size = 3", "Bad.max_size must be a whole number >= 10, got 3"),  # below train_max_size
    ("Input = dict", "Bad.Input must be a pydantic BaseModel subclass"),
    ("def tools(self, problem):\n        return ['tape']", "Bad.tools must return mamba_agent.tools.Tool instances, got str"),
    ("def tools(self, problem):\n        return [PointerMemory(problem.prompt[1:], 1), PointerMemory([], 1)]",
     "tools PointerMemory and PointerMemory both answer [P1."),
    ("def tools(self, problem):\n        t = Tool()\n        t.commands = frozenset({'read'})\n        return [t]",
     "tool Tool answers 'read', not a command token"),
    ("def training_problem(self, rng):\n        p = super().training_problem(rng)\n        p.prompt = p.prompt[1:]\n        return p",
     "a problem's prompt must be [BOS] then token ids"),
])
def test_a_task_plugin_without_the_interface_is_one_line(example, module, body, said):
    name = module(f"bad_{abs(hash(body))}", SORT_LIKE.format(body=body))
    with pytest.raises(PluginError, match=f"^task plugin '{name}:Bad': .*") as e:
        get_task(f"{name}:Bad")
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_broken_policy_plugin_is_one_line_naming_it(example, module, tmp_path, monkeypatch, capsys):
    name = module("policies_without_config", """
        from mamba_sort.policy import WindowPolicy
        class NoConfig(WindowPolicy):
            Config = None
        class Abstract(WindowPolicy.__mro__[1]):
            Config = WindowPolicy.Config
    """)
    with pytest.raises(PluginError, match="NoConfig.Config must be its PolicyConfig subclass"):
        policy_classes(f"{name}:NoConfig")
    with pytest.raises(PluginError, match="Abstract does not define forward, init_state, state_nbytes, step"):
        policy_classes(f"{name}:Abstract")
    register(tmp_path, monkeypatch, "mamba_agent.policies", "window", "mamba_sort.nowhere:WindowPolicy")
    assert main(["train", "--task", SORT, "--policy", "window", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--policy: policy plugin 'window' (mamba_sort.nowhere:WindowPolicy): cannot import mamba_sort.nowhere" in err
    assert len(err.strip().splitlines()) == 1


def test_a_task_file_names_a_plugin_task_and_solve_needs_its_checkpoint(example, tmp_path, capsys):
    path = tmp_path / "sort.yaml"
    path.write_text(f"task: {SORT}\nsize: 30\ntrajectory: {tmp_path}/t.jsonl\n")
    assert main(["solve", str(path)]) == 2
    assert f"no checkpoint is shipped for task '{SORT}'; give policy.checkpoint" in capsys.readouterr().err
    path.write_text("task: nosuch_module:Sort\nsize: 30\n")
    assert main(["solve", str(path)]) == 2
    assert "task: task plugin 'nosuch_module:Sort': cannot import nosuch_module" in capsys.readouterr().err


def test_a_checkpoint_of_a_plugin_that_is_not_installed_says_which(example, tmp_path, monkeypatch):
    from mamba_agent.checkpoint import CheckpointError

    main(["train", "--task", SORT, "--policy", WINDOW, "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run")])
    config = tmp_path / "run" / "config.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "policy": {**meta["policy"], "kind": "window"}}))
    with pytest.raises(CheckpointError, match=r"config.json: unknown policy kind 'window'; valid kinds: mamba, .*"):
        load_checkpoint(tmp_path / "run")
    config.write_text(json.dumps({**meta, "task": "sort"}))
    with pytest.raises(CheckpointError, match=r"config.json: unknown task 'sort'; valid tasks: addition, .*"):
        load_checkpoint(tmp_path / "run")
