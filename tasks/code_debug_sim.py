"""What `python3 main.py` does to a code_debug codebase, worked out without running anything.

The code task's oracle only ever runs code that the generator wrote and the oracle itself edited:
known-buggy or known-fixed, inside a small grammar. Its `[RUN]` observations can therefore be
computed: this module interprets that grammar (through `ast`, nothing is executed) and writes
what CPython 3.11 prints, byte for byte: the program's output, the traceback as 3.11's default
hook prints it (absolute paths, the `^^^` line under a sub-expression, the NameError's
"Did you mean" suggestion), the exit status, then what the shell command's `tail` keeps.
`SimulatedSandbox` answers the two commands the task runs with the `ExecResult` a real sandbox
returns. The oracle uses it so that generating training data needs no sandbox (and no
bubblewrap, so it runs on the GPU machine too) and takes milliseconds instead of one sandboxed
Python start per run. A policy's commands are arbitrary code: they always go to a real sandbox.

Faithful for (anything else raises `Unsupported`, never guesses):
    module   := (`from NAME import NAME`)* `def NAME(PARAMS):` BODY [`main()` in main.py]
    BODY     := (`NAME = OPERAND [+-* OPERAND]` | `NAME(ARGS)`)*   on one line each, ASCII, indent 4
    OPERAND  := a name or an int literal; ARGS: names, ints or strings; NAME() is a function
                of the codebase or print
and the failures of that grammar: a name that is not defined (NameError) and a call with too
few or too many arguments (TypeError). tests/test_code_debug.py runs the oracle both ways
(simulated, and through the bubblewrap sandbox) and finds the trajectories token-identical, and
compares both on states the oracle never reaches. The format is 3.11's, the Python the sandbox
runs on the machine that evaluates; the simulator writes it under any Python (the GPU machine
has 3.12), so the training data does not depend on where it is generated.
"""

import ast
import builtins
import functools
from collections.abc import Callable
from pathlib import Path

from mamba_agent.sandboxes import ExecResult, SandboxLimits

TAIL_LINES = 12
RUN_COMMAND = f"python3 -S -u main.py 2>&1 | tail -n {TAIL_LINES}; exit ${{PIPESTATUS[0]}}"
# -S: no `site` (the code imports only its own files): Python starts in about 35 ms in the sandbox
# instead of 80 (site-packages here holds many .pth files). `tail -n 12`: a traceback has two lines
# per frame, so a deep failing path would make every observation, and the whole trajectory, grow
# as n^2; the last 12 lines always hold the error and the 4 frames nearest to it, which are all a
# round reads. -u keeps what the program printed before the traceback (unbuffered), and
# PIPESTATUS keeps python's exit status through the pipe.
RUN_ARGV = ["env", "PYTHONDONTWRITEBYTECODE=1", "bash", "-c", RUN_COMMAND]  # as tools/run.py runs it
CHECK_ARGV = ["env", "PYTHONDONTWRITEBYTECODE=1", "python3", "-S", "main.py"]  # the checker's run

MAX_DEPTH = 900  # frames; CPython stops at 1,000 (RecursionError), which is not reproduced
MAX_CALLS = 1_000_000
_SITE_BUILTINS = {"exit", "quit", "copyright", "credits", "license", "help"}  # absent under -S
_BUILTINS = [name for name in vars(builtins) if name not in _SITE_BUILTINS]
_MODULE_DUNDERS = ["__name__", "__doc__", "__package__", "__loader__", "__spec__", "__file__",
                   "__cached__", "__builtins__"]
_MAIN_DUNDERS = ["__name__", "__doc__", "__package__", "__loader__", "__spec__", "__annotations__",
                 "__builtins__", "__file__", "__cached__"]
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


class Unsupported(Exception):
    """The code or command is outside what the simulator reproduces exactly."""


class _PythonError(Exception):
    """An exception of the simulated program: its type, message and traceback frames."""

    def __init__(self, kind: str, message: str, frames: list[tuple]):
        self.kind, self.message, self.frames = kind, message, frames


@functools.lru_cache(maxsize=1024)
def _parse(source: str) -> ast.Module | None:
    """The tree of `source` (never modified), None for a syntax error. Cached: between two runs
    an oracle round edits at most 3 files of the n + 1."""
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


class _Module:
    def __init__(self, name: str, path: str, source: str, dunders: list[str]):
        if not source.isascii() or "\t" in source or "\f" in source or "\r" in source:
            raise Unsupported(f"{name}: only ASCII source without tabs is reproduced")
        self.tree = _parse(source)
        if self.tree is None:
            raise Unsupported(f"{name}: syntax error")
        self.name, self.path, self.lines = name, path, source.split("\n")
        self.globals: dict[str, object] = dict.fromkeys(dunders)


class _Function:
    def __init__(self, module: _Module, node: ast.FunctionDef):
        a = node.args
        if a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults or node.decorator_list:
            raise Unsupported(f"{node.name}: only plain positional parameters are reproduced")
        self.module, self.node, self.name = module, node, node.name
        for stmt in node.body:  # checked here, as the local names (co_varnames) depend on all of it
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                    or isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
                raise Unsupported(f"{node.name}: statement at line {stmt.lineno} is outside the grammar")
        self.params = [p.arg for p in a.args]
        targets = [s.targets[0].id for s in node.body if isinstance(s, ast.Assign)]
        self.varnames = list(dict.fromkeys(self.params + targets))  # co_varnames' order


class _Program:
    def __init__(self, source: Callable[[str], str | None], directory: str):
        self.source, self.directory = source, directory
        self.modules: dict[str, _Module] = {}
        self.stack: list[list] = []  # frames: [module, _Function or None (module level), node]
        self.stdout: list[str] = []
        self.calls = 0

    def run(self) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of `python3 main.py`."""
        try:
            self._exec_module("main", "__main__")
        except _PythonError as e:
            lines = ["Traceback (most recent call last):\n"]
            lines += [_frame_text(*frame) for frame in e.frames]
            lines.append(f"{e.kind}: {e.message}\n")
            return 1, "".join(self.stdout), "".join(lines)
        return 0, "".join(self.stdout), ""

    def _exec_module(self, name: str, as_name: str) -> _Module:
        text = self.source(f"{name}.py")
        if text is None:
            raise Unsupported(f"no module {name}")
        module = _Module(name, f"{self.directory}/{name}.py", text,
                         _MAIN_DUNDERS if as_name == "__main__" else _MODULE_DUNDERS)
        self.modules[name] = module
        body = module.tree.body
        for i, node in enumerate(body):
            if isinstance(node, ast.ImportFrom):
                if (node.level or len(node.names) != 1 or node.names[0].asname
                        or node.module != node.names[0].name or node.module == "main"):
                    raise Unsupported(f"{name}: only `from f import f` is reproduced")  # (main.py runs as __main__)
                imported = self.modules.get(node.module) or self._exec_module(node.module, node.module)
                if not isinstance(imported.globals.get(node.module), _Function):
                    raise Unsupported(f"{name}: {node.module} defines no function {node.module}")
                module.globals[node.module] = imported.globals[node.module]
            elif isinstance(node, ast.FunctionDef):
                module.globals[node.name] = _Function(module, node)
            elif (as_name == "__main__" and i == len(body) - 1 and isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Call)):
                self.stack.append([module, None, node.value])
                self._call(module, {}, set(), node.value)
                self.stack.pop()
            else:
                raise Unsupported(f"{name}: statement at line {node.lineno} is outside the grammar")
        return module

    def _call(self, module: _Module, local: dict, local_names: set, node: ast.Call) -> None:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise Unsupported(f"{module.name}: line {node.lineno}: only f(a, b) calls are reproduced")
        function = self._load(module, local, local_names, node.func)
        args = [self._operand(module, local, local_names, a) for a in node.args]
        if function is print:
            self.stdout.append(" ".join(map(str, args)) + "\n")
            return
        if not isinstance(function, _Function):
            raise Unsupported(f"{module.name}: line {node.lineno}: calls {node.func.id}")
        message = _arity_error(function, len(args))
        if message:
            raise self._error("TypeError", message, node)
        self.calls += 1
        if len(self.stack) >= MAX_DEPTH or self.calls > MAX_CALLS:
            raise Unsupported("the call stack or the number of calls is too large to reproduce")
        frame = [function.module, function, None]
        self.stack.append(frame)
        local = dict(zip(function.params, args))
        local_names = set(function.varnames)
        for stmt in function.node.body:  # assignments and calls (checked by _Function)
            if isinstance(stmt, ast.Assign):
                frame[2] = stmt
                local[stmt.targets[0].id] = self._expression(function.module, local, local_names, stmt.value)
            else:
                frame[2] = stmt.value
                self._call(function.module, local, local_names, stmt.value)
        self.stack.pop()

    def _expression(self, module, local, local_names, node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a = self._operand(module, local, local_names, node.left)
            b = self._operand(module, local, local_names, node.right)
            if not (type(a) is int and type(b) is int):
                raise Unsupported(f"{module.name}: line {node.lineno}: arithmetic on non-integers")
            return _OPS[type(node.op)](a, b)
        return self._operand(module, local, local_names, node)

    def _operand(self, module, local, local_names, node):
        if isinstance(node, ast.Name):
            value = self._load(module, local, local_names, node)
            if type(value) is not int:
                raise Unsupported(f"{module.name}: line {node.lineno}: {node.id} is not an integer")
            return value
        if isinstance(node, ast.Constant) and type(node.value) in (int, str):
            return node.value
        raise Unsupported(f"{module.name}: line {node.lineno}: expression outside the grammar")

    def _load(self, module: _Module, local: dict, local_names: set, node: ast.Name):
        name = node.id
        if name in local_names:  # a local of the function (compiled as such): never a global
            if name not in local:
                raise Unsupported(f"{module.name}: line {node.lineno}: {name} used before assignment")
            return local[name]
        if name in module.globals:
            if name.startswith("__"):
                raise Unsupported(f"{module.name}: line {node.lineno}: uses {name}")
            return module.globals[name]
        if name == "print":
            return print
        if name in _BUILTINS:
            raise Unsupported(f"{module.name}: line {node.lineno}: uses the builtin {name}")
        function = self.stack[-1][1]
        varnames = function.varnames if function else []  # the frame's co_varnames
        message = f"name '{name}' is not defined"
        suggestion = (_suggestion(name, varnames) or _suggestion(name, list(module.globals))
                      or _suggestion(name, _BUILTINS))
        if suggestion:
            message += f". Did you mean: '{suggestion}'?"
        raise self._error("NameError", message, node)

    def _error(self, kind: str, message: str, node: ast.AST) -> _PythonError:
        frames = [(m, f.name if f else "<module>", n) for m, f, n in self.stack]
        frames[-1] = frames[-1][:2] + (node,)
        return _PythonError(kind, message, frames)


def _arity_error(function: _Function, given: int) -> str | None:
    """CPython's TypeError message for calling `function` with `given` positional arguments."""
    n = len(function.params)
    if given > n:
        return (f"{function.name}() takes {n} positional argument{'' if n == 1 else 's'} but "
                f"{given} {'was' if given == 1 else 'were'} given")
    if given < n:
        missing = [f"'{p}'" for p in function.params[given:]]
        if len(missing) == 1:
            names = missing[0]
        elif len(missing) == 2:
            names = f"{missing[0]} and {missing[1]}"
        else:
            names = ", ".join(missing[:-1]) + f", and {missing[-1]}"
        return f"{function.name}() missing {len(missing)} required positional argument{'s' if len(missing) > 1 else ''}: {names}"
    return None


def _frame_text(module: _Module, function: str, node: ast.AST) -> str:
    """One traceback entry as 3.11 prints it: the line, stripped, and carets under the failing
    expression unless they would span the whole stripped line (3.11 adds no anchors for the
    names and calls of this grammar)."""
    if node.lineno != node.end_lineno:
        raise Unsupported(f"{module.name}: line {node.lineno}: a multi-line expression")
    line = module.lines[node.lineno - 1]
    stripped = line.lstrip(" ")
    if stripped != stripped.rstrip():
        raise Unsupported(f"{module.name}: line {node.lineno}: trailing whitespace")
    text = f'  File "{module.path}", line {node.lineno}, in {function}\n    {stripped}\n'
    indent = len(line) - len(stripped)
    start, end = node.col_offset - indent, node.end_col_offset - indent
    if end - start != len(stripped):
        text += " " * (4 + start) + "^" * (end - start) + "\n"
    return text


def _levenshtein(a: str, b: str, max_cost: int) -> int:
    """CPython 3.11's suggestion distance (Python/suggestions.c): moves cost 2, case changes 1."""
    def substitution(x: str, y: str) -> int:
        if ord(x) & 31 != ord(y) & 31:
            return 2
        return 0 if x == y else (1 if x.lower() == y.lower() else 2)

    if a == b:
        return 0
    pre = 0
    while pre < min(len(a), len(b)) and a[pre] == b[pre]:
        pre += 1
    a, b = a[pre:], b[pre:]
    post = 0
    while post < min(len(a), len(b)) and a[-1 - post] == b[-1 - post]:
        post += 1
    a, b = a[: len(a) - post], b[: len(b) - post]
    if not a or not b:
        return (len(a) + len(b)) * 2
    if len(a) > 40 or len(b) > 40:
        return max_cost + 1
    if len(b) < len(a):
        a, b = b, a
    if (len(b) - len(a)) * 2 > max_cost:
        return max_cost + 1
    row = [(i + 1) * 2 for i in range(len(a))]
    result = 0
    for bi, code in enumerate(b):
        distance = result = bi * 2
        minimum = None
        for i, ca in enumerate(a):
            substitute = distance + substitution(code, ca)
            distance = row[i]
            result = min(min(result, distance) + 2, substitute)
            row[i] = result
            minimum = result if minimum is None else min(minimum, result)
        if minimum > max_cost:
            return max_cost + 1
    return result


def _suggestion(name: str, candidates: list[str]) -> str | None:
    """The first closest candidate within a third of the characters (calculate_suggestions)."""
    if len(candidates) >= 750:
        return None
    best, best_distance = None, None
    for item in candidates:
        if item == name:
            continue
        max_distance = (len(name) + len(item) + 3) * 2 // 6
        if best_distance is not None:
            max_distance = min(max_distance, best_distance - 1)
        distance = _levenshtein(name, item, max_distance)
        if distance <= max_distance and (best is None or distance < best_distance):
            best, best_distance = item, distance
    return best


def run_main(source: Callable[[str], str | None], directory: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python3 -S main.py` in `directory`, whose files `source`
    gives by name (None: no such file). Raises Unsupported outside the grammar."""
    return _Program(source, directory).run()


def _tail(text: str, n: int) -> str:
    lines = text.split("\n")
    if lines[-1] == "":  # the text ends with a newline: no partial last line
        return "\n".join(lines[-n - 1 :])
    return "\n".join(lines[-n:])


class SimulatedSandbox:
    """Stands in for a sandbox on a code_debug workspace; answers RUN_ARGV and CHECK_ARGV only.

    Raises:
        Unsupported: from `run`, for another command or code outside the grammar.
    """

    name = "simulated"
    isolated = False

    def __init__(self, workspace: str | Path, limits: SandboxLimits):
        self.workspace, self.limits = Path(workspace).resolve(), limits

    def _source(self, name: str) -> str | None:
        path = self.workspace / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def run(self, command: str | list[str]) -> ExecResult:
        code, stdout, stderr = run_main(self._source, str(self.workspace))
        if command == RUN_ARGV:  # 2>&1 (stderr only ever holds the final traceback), then tail
            stdout, stderr = _tail(stdout + stderr, TAIL_LINES), ""
        elif command != CHECK_ARGV:
            raise Unsupported(f"the simulated sandbox runs only the task's commands, not {command!r}")
        out, err = stdout.encode(), stderr.encode()
        cap = self.limits.output_bytes
        return ExecResult(
            backend=self.name, isolated=False, exit_code=code,
            stdout=out[:cap].decode("utf-8", errors="replace"), stderr=err[:cap].decode("utf-8", errors="replace"),
            stdout_truncated=len(out) > cap, stderr_truncated=len(err) > cap, killed=False,
        )

    def close(self) -> None:
        """Nothing to release."""
