"""Code debugging (the paper's code-fixing task): thread `v10` from main.py down to foo.py.

The codebase: `size` = n Python functions, one per file (`f417.py` holds `def f417`), named from
f0..f999 at random, the last one `foo`, plus main.py whose `main()` defines v0..v10 and calls some
functions. Functions call later functions (a DAG: each function is called by one of the three
before it, and some by a second, earlier one; main's calls count as callers), so every function
runs and foo is reached by at least one path. Parameters are drawn from v0..v9, each function does
one line of arithmetic, and foo prints `foo <value> <v10>`. The bug: main defines v10 and foo uses
it, but no function passes it, so `python3 main.py` dies with a NameError in foo and the traceback
names the files on the failing call path. The fix: v10 becomes the last parameter of every
function on a path from main to foo, and the last argument of every call on those paths.
Executions are bounded: a second caller is added only while every function together runs at most
4n times (the number of paths from main grows exponentially in a dense DAG).

Interactive oracle (the one to train on), one round:
    [RUN]<RUN_COMMAND>[END] -> exit 1 and the end of a traceback (or exit 0: `[ANS]fixed[EOS]`)
    then, walking the traceback's frames from the last (closest to foo) up, at most 3 files:
    [VIEW]file[END] -> numbered lines
    [EDIT]file:D-D\\n<def line with `, v10` appended to the parameters>[END]  (if not there yet)
    [EDIT]file:C-C\\n<the traced call line with `, v10` appended to the arguments>[END]
      (the call line C is the frame's line in the traceback; there is none for the frame that
      raised the NameError, which is foo's use of v10)
    and stop at main.py, at a file whose def already had v10 (its callers already pass it), or
    after the third file. Every decision reads the last traceback and the file just viewed; the
    next round's traceback (a TypeError "missing ... 'v10'" at a caller of a fixed function)
    shows what is left. Rounds go until the program runs.
Single-turn oracle: view every file listed in the prompt, then every edit (defs and calls of
every function that reaches foo, worked out from the viewed code), then one run, then the answer.

Locality (shared/locality.md): neither trajectory is k-local for a small k, and cannot be made so:
files and tracebacks are variable-length content, and the name of the next file to view, the
line number of a call and the text of a line to rewrite are copied from an observation tens to
hundreds of tokens back. Measured (smallest conflict-free k, tests/test_code_debug.py, one
codebase per size 4..16): interactive 100 (124 with four per size; 131 over sizes 17..64, 131 all
together), single-turn 51 (78 with four per size, 111 over 4..64); the pointer tasks have 7..11.
What the interactive design bounds is how far back a copy reaches: a file has at most 9 calls
and one assignment at any n, the run shows only the last 12 lines (the 4 frames nearest the
error), and a round works on the last 3 frames, nearest first; its k levels off near 130 as n
grows. The single-turn agent must carry what it read in every file to the edits, a distance that
grows with n; its in-sample k is lower only because random names make long contexts unique (a
conflict-free k is a lower bound on what the model must remember, not the distance it copies
over). Expect weaker length generalisation than on the pointer tasks either way.

The oracle's runs (`oracle_runs`, default "simulated"): the oracle only runs code that the
generator wrote and it edited itself, so its `[RUN]` observations and its final check are
computed by code_debug_sim, an interpreter of the generated grammar (through `ast`; nothing is
executed) that writes what CPython 3.11 prints, byte for byte, and raises rather than guess
outside that grammar. Training data (`training_problem` + `oracle`, as train.py calls them)
and the sweep's reference trajectories then need no sandbox, no bubblewrap and no Python start:
15-25 ms a trajectory at n = 4..16 on one core here, against about 310 ms through bubblewrap
(about 40 ms per sandboxed run, 4.9 runs a trajectory, plus a probe and a run for the check).
`oracle_runs="sandbox"` sends them through `backend` instead: tests/test_code_debug.py checks
that both give token-identical trajectories (sizes 2..16, 32, 64; train.py's own draws; both
oracles). A policy's commands are arbitrary code: `tools(problem)`, which builds every episode
a policy drives (`solve`, `eval`), and `check` always use the real `backend` sandbox.

Workspaces: `tools(problem)` renders the codebase into a fresh `Workspace` per episode
(sandboxes/workspace.py: as root a capped tmpfs owned by the sandbox user), which the episode's
tools hold; it is removed when the last of them is dropped, and at interpreter exit. `check`
reads the files through the episode's tools with the file tools' safe reader (no link
followed, no FIFO, a byte cap), so episodes of one problem never see each other's workspace
and planted files cannot reach outside it.

Checker: the answer must be `fixed`; the workspace's files, copied to a fresh directory, must run
in the sandbox with exit 0 and print `foo ... <v10>` with the value main set, once per path from
main to foo in the original codebase; and (ast) in the code as it now is, every function that
reaches foo has a v10 parameter that every call to it from main or from such a function passes
the name v10 to (same position, or v10=v10).
"""

import ast
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from pydantic import BaseModel, ConfigDict, Field

from mamba_agent.episode import FINISHED, Episode
from mamba_agent.sandboxes import SandboxLimits, get_sandbox
from mamba_agent.sandboxes.workspace import Workspace, WorkspaceError, read_file
from mamba_agent.tasks import Problem, Task
from mamba_agent.tasks.code_debug_sim import CHECK_ARGV, RUN_COMMAND, SimulatedSandbox, run_main
from mamba_agent.trajectory import Trajectory
from mamba_agent.tools.files import MAX_FILE_BYTES, FileEdit, FileView
from mamba_agent.tools.run import Run, close_in_background
from mamba_agent.vocab import ANS, BOS, EDIT, END, EOS, OBS_END, RUN, VIEW, decode, encode

ANSWER = "fixed"
MAX_CALLERS_WINDOW = 3  # a function's first caller is one of the 3 before it (main counts as index 0)
EXTRA_CALLER_WINDOW = 6
EXTRA_CALLER_P = 0.3
MAX_RUNS_PER_FUNCTION = 4
FILES_PER_ROUND = 3
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
_FRAME = re.compile(r'^  File "([^"]+)", line (\d+), in (\S+)$', re.M)
_OPS = ("+", "-", "*")


class CodeDebugInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=1, le=1000)
    """Number of functions n (foo included, main not): one file each."""
    seed: int = Field(ge=0)
    """Seed of the generated codebase: the same size and seed always give the same files."""


@dataclass
class Function:
    name: str
    params: list[str]
    target: str  # the one assignment: target = expression
    expression: str
    calls: list[tuple[str, list[str]]] = field(default_factory=list)  # (callee, args), in order


@dataclass
class Codebase:
    values: list[int]  # v0..v9 in main
    v10: int
    main_calls: list[tuple[str, list[str]]]
    functions: list[Function]  # in DAG order; the last is foo

    def files(self) -> dict[str, str]:
        """File name -> source, the bug included."""
        out = {"main.py": _TEMPLATES.get_template("code_debug_main.py.j2").render(
            imports=_imports(self.main_calls), values=self.values, v10=self.v10,
            calls=[{"callee": c, "args": a} for c, a in self.main_calls])}
        for f in self.functions:
            out[f"{f.name}.py"] = _TEMPLATES.get_template("code_debug_function.py.j2").render(
                imports=_imports(f.calls), name=f.name, params=f.params, target=f.target,
                expression=f.expression, calls=[{"callee": c, "args": a} for c, a in f.calls])
        return out

    def foo_paths(self) -> int:
        """Number of call paths from main to foo (how many times foo runs)."""
        return _path_counts(self)["foo"]


def _imports(calls) -> list[str]:
    return sorted({c for c, _ in calls})


def _path_counts(cb: Codebase) -> dict[str, int]:
    counts = {f.name: 0 for f in cb.functions}
    for callee, _ in cb.main_calls:
        counts[callee] += 1
    for f in cb.functions:  # DAG order: every caller comes before its callees
        for callee, _ in f.calls:
            counts[callee] += counts[f.name]
    return counts


def generate(size: int, seed: int) -> Codebase:
    """The codebase of `size` functions for `seed` (deterministic)."""
    rng = random.Random(seed)
    names = [f"f{k}" for k in rng.sample(range(1000), size - 1)] + ["foo"]
    params = [sorted(rng.sample(range(10), rng.randint(1, 3))) for _ in names]
    callers: list[list[int]] = [[rng.randrange(max(0, i - MAX_CALLERS_WINDOW + 1), i + 1)] for i in range(size)]
    # callers[i]: indices of the callers of function i, 0 = main, j+1 = function j.

    def runs() -> int:
        counts = [1] + [0] * size
        for i in range(size):
            counts[i + 1] = sum(counts[c] for c in callers[i])
        return sum(counts[1:])

    for i in range(1, size):
        if rng.random() < EXTRA_CALLER_P:
            extra = rng.randrange(max(0, i - EXTRA_CALLER_WINDOW + 1), i + 1)
            if extra not in callers[i]:
                callers[i].append(extra)
                if runs() > MAX_RUNS_PER_FUNCTION * size:
                    callers[i].pop()
    functions = []
    for i, name in enumerate(names):
        vars_ = [f"v{p}" for p in params[i]]
        target = f"v{rng.choice([v for v in range(10) if v not in params[i]])}"
        expression = f"{rng.choice(vars_)} {rng.choice(_OPS)} {rng.randint(1, 9)}"
        functions.append(Function(name, vars_, target, expression))
    main_calls = []
    for i in range(size):  # calls in callee order; arguments from what the caller has in scope
        for c in sorted(callers[i]):
            scope = [f"v{v}" for v in range(10)] if c == 0 else functions[c - 1].params + [functions[c - 1].target]
            call = (names[i], [rng.choice(scope) for _ in params[i]])
            (main_calls if c == 0 else functions[c - 1].calls).append(call)
    return Codebase([rng.randint(0, 99) for _ in range(10)], rng.randint(100, 999), main_calls, functions)


class CodeDebug(Task):
    name = "code_debug"
    Input = CodeDebugInput
    train_sizes = (4, 16)  # the paper trains on n in 4..16
    train_max_size = 16
    single_turn = False  # True: `solve` drives the single-turn oracle instead

    def __init__(self, backend: str = "bubblewrap", limits: SandboxLimits | None = None,
                 oracle_runs: str = "simulated"):
        """`backend`: the sandbox of a policy's episodes and of the checker. `oracle_runs`:
        "simulated" (the oracle's runs and check computed, no sandbox) or "sandbox" (through
        `backend`); see the module docstring."""
        if oracle_runs not in ("simulated", "sandbox"):
            raise ValueError(f"oracle_runs must be 'simulated' or 'sandbox', got {oracle_runs!r}")
        self.backend, self.oracle_runs = backend, oracle_runs
        self.limits = limits or SandboxLimits(wall_s=10.0, cpu_s=10, memory_mb=512, output_bytes=8_000)

    def problem(self, input: dict) -> Problem:
        x = CodeDebugInput.model_validate(input)
        names = sorted(f"{f.name}.py" for f in generate(x.size, x.seed).functions)
        prompt = f"python3 main.py fails: fix the code\nfiles: main.py {' '.join(names)}\n"
        return Problem(task=self.name, input=x.model_dump(), size=x.size, prompt=[BOS] + encode(prompt), reference=ANSWER)

    def random_problem(self, rng: random.Random, size: int) -> Problem:
        return self.problem({"size": size, "seed": rng.randrange(2**31)})

    def training_problem(self, rng: random.Random) -> Problem:
        return self.random_problem(rng, rng.randint(*self.train_sizes))

    def tools(self, problem: Problem, simulated: bool = False) -> list:
        """View, edit and run on a fresh workspace; `simulated`: run through SimulatedSandbox
        (only for the oracle, whose code is known)."""
        cb = generate(problem.input["size"], problem.input["seed"])
        workspace = Workspace(cb.files())
        sandbox = SimulatedSandbox(workspace.path, self.limits) if simulated else None
        run = Run(workspace.path, self.backend, self.limits, sandbox=sandbox)
        tools = [FileView(workspace.path), FileEdit(workspace.path), run]
        for tool in tools:
            tool.owner = workspace  # the directory lives as long as a tool does
        return tools

    def max_tokens(self, problem: Problem) -> int:
        # The interactive oracle takes about 300 tokens per function (19,335 at n = 64), the
        # single-turn one about 250; leave room for a policy that wanders.
        return 10_000 + 1_000 * problem.size

    def oracle(self, problem: Problem) -> Trajectory:
        if self.oracle_runs == "sandbox":
            return super().oracle(problem)
        episode = Episode(problem.prompt, self.tools(problem, simulated=True), self.max_tokens(problem), keep=True)
        self.solve(episode, problem)
        if episode.exit != FINISHED or not self._check(problem, episode.answer, episode.tools, self._run_simulated):
            raise AssertionError(f"{self.name} oracle failed on {problem.input!r}: {episode.exit}")
        return episode.trajectory

    def check(self, problem: Problem, answer: str, tools=()) -> bool:
        """The episode's files (through its edit tool) must be fixed, and the answer `fixed`."""
        return self._check(problem, answer, tools, self._run_in_sandbox)

    def _check(self, problem: Problem, answer: str, tools, run) -> bool:
        workspace = next((t.workspace for t in tools if isinstance(t, FileEdit)), None)
        if answer != ANSWER or workspace is None:
            return False
        cb = generate(problem.input["size"], problem.input["seed"])
        files = {}
        for name in cb.files():
            try:  # as the file tools read: no link followed, no FIFO, at most MAX_FILE_BYTES
                files[name] = read_file(workspace, name, MAX_FILE_BYTES).decode()
            except (WorkspaceError, UnicodeDecodeError):
                return False
        if not threaded(files):
            return False
        exit_code, stdout = run(files)
        lines = stdout.splitlines()
        return (exit_code == 0 and len(lines) == cb.foo_paths()
                and all(line.startswith("foo ") and line.split()[-1] == str(cb.v10) for line in lines))

    def _run_in_sandbox(self, files: dict[str, str]) -> tuple[int, str]:
        """(exit status, stdout) of `files`' main.py, copied to a fresh directory, in `backend`."""
        scratch = Workspace(files)
        sandbox = get_sandbox(self.backend, scratch.path, self.limits)
        try:
            r = sandbox.run(CHECK_ARGV)
        finally:
            close_in_background(sandbox)
            scratch.close()
        return r.exit_code, r.stdout

    @staticmethod
    def _run_simulated(files: dict[str, str]) -> tuple[int, str]:
        exit_code, stdout, _ = run_main(files.get, "/check")
        return exit_code, stdout

    def solve(self, episode: Episode, problem: Problem) -> None:
        (solve_single_turn if self.single_turn else solve_interactive)(episode, problem)


class CodeDebugSingleTurn(CodeDebug):
    """The same task, its oracle the single-turn agent (view everything, edit everything, run once)."""

    single_turn = True


# --- static check -------------------------------------------------------------------------------

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


# --- oracles -------------------------------------------------------------------------------------

def _command(episode: Episode, token: int, argument: str) -> str:
    """Emit `token argument [END]` through `act`; the observation's text, [/OBS] dropped."""
    episode.act(token)
    for t in encode(argument):
        episode.act(t)
    obs = episode.act(END)
    assert obs and obs[-1] == OBS_END, decode(obs)
    return decode(obs[:-1])


def _answer(episode: Episode) -> None:
    for t in [ANS] + encode(ANSWER):
        episode.act(t)
    episode.act(EOS)


def _view(episode: Episode, name: str) -> list[str]:
    """View all of `name` (scrolling while the window ends before the file); its lines."""
    lines, start = [], 1
    while True:
        obs = _command(episode, VIEW, name if start == 1 else f"{name}:{start}")
        header, *numbered = obs.split("\n")
        last, total = map(int, re.fullmatch(r"\[\S+ lines \d+-(\d+) of (\d+)\]", header).groups())
        lines += [line.split(": ", 1)[1] if ": " in line else "" for line in numbered]
        if last >= total:
            return lines
        start = last + 1


def _def_line(lines: list[str]) -> int:
    """1-based number of the file's `def` line."""
    return next(i for i, line in enumerate(lines, 1) if line.startswith("def "))


def _with_v10(line: str) -> str:
    """`def f(a, b):` -> `def f(a, b, v10):`; `    f(a, b)` -> `    f(a, b, v10)`."""
    close = line.rindex(")")
    return f"{line[:close]}, v10{line[close:]}"


def _edit(episode: Episode, name: str, number: int, text: str) -> None:
    _command(episode, EDIT, f"{name}:{number}-{number}\n{text}")


def solve_interactive(episode: Episode, problem: Problem) -> None:
    while True:
        obs = _command(episode, RUN, RUN_COMMAND)
        if obs.startswith("exit 0\n"):
            return _answer(episode)
        frames = [(f, int(n), fn) for f, n, fn in _FRAME.findall(obs) if fn != "<module>"]
        name_error = "NameError: name 'v10' is not defined" in obs
        for depth, (name, number, function) in enumerate(reversed(frames)):
            lines = _view(episode, name)
            d = _def_line(lines)
            def_had_v10 = function == "main" or "v10" in lines[d - 1]
            if not def_had_v10:
                _edit(episode, name, d, _with_v10(lines[d - 1]))
            if not (depth == 0 and name_error):
                _edit(episode, name, number, _with_v10(lines[number - 1]))
            if def_had_v10 or depth + 1 == FILES_PER_ROUND:
                break


def solve_single_turn(episode: Episode, problem: Problem) -> None:
    names = decode(problem.prompt[1:]).split("\n")[1].removeprefix("files: ").split()
    sources = {name: _view(episode, name) for name in names}
    calls = {}  # function -> [(line number, callee)]
    for name, lines in sources.items():
        function = name.removesuffix(".py")
        calls[function] = [(i, m.group(1)) for i, line in enumerate(lines, 1)
                           if (m := re.fullmatch(r"    (\w+)\(.*\)", line)) and m.group(1) != "print"]
    reaches, changed = {"foo"}, True
    while changed:
        changed = False
        for f, cs in calls.items():
            if f not in reaches and any(g in reaches for _, g in cs):
                reaches.add(f)
                changed = True
    for name, lines in sources.items():
        function = name.removesuffix(".py")
        if function not in reaches:
            continue
        if function != "main":
            d = _def_line(lines)
            _edit(episode, name, d, _with_v10(lines[d - 1]))
        for number, callee in calls[function]:
            if callee in reaches:
                _edit(episode, name, number, _with_v10(lines[number - 1]))
    obs = _command(episode, RUN, RUN_COMMAND)
    assert obs.startswith("exit 0\n"), obs
    _answer(episode)
