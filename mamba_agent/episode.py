"""An episode: one problem, its tools, and the rules that turn model tokens into roles.

`Episode.act(token)` takes one token the model produced and returns the observation tokens the
runtime must force into the model next. The runtime loop, the oracles and the tests all drive
episodes through this one method, so a replayed oracle goes through exactly the code a policy does.

Malformed model output never raises: a token only tools may produce ([EDGE], [ERR], [/OBS], ...),
a command no tool of this task answers, a second [ANS], or an [END] with no open argument is
recorded as a command and answered with [ERR]. Too many in a row ends the episode. An argument
may hold special tokens (a search pattern may); a tool that takes text answers them with an error.
"""

import time
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from mamba_agent.tools import Tool
from mamba_agent.trajectory import COMMAND, INPUT, OBSERVATION, OUTPUT, THOUGHT, Trajectory, TrajectoryWriter
from mamba_agent.vocab import ANS, END, EOS, ERR, decode

# Exit reasons: every episode ends with exactly one.
FINISHED = "finished"  # the model emitted [EOS]
TOKEN_LIMIT = "token_limit"
TIME_LIMIT = "time_limit"
FORMAT_ERRORS = "format_errors"  # too many malformed commands in a row
REPEATING = "repeating"  # the same tool calls, with the same answers, over and over
DIVERGED = "diverged"  # evaluation only: the model left the oracle trajectory
ERROR = "error"  # could not finish: a tool or the policy raised (Episode.abort, from the runtime)
INTERRUPTED = "interrupted"  # could not finish: the run was stopped (SIGINT, SIGTERM)


class Limits(BaseModel, use_attribute_docstrings=True):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, gt=0)
    """Most tokens in the whole trajectory (input included); None: the task's own default."""
    max_seconds: float = Field(3600.0, gt=0)
    """Wall-clock limit for one episode, in seconds."""
    max_format_errors: int = Field(20, ge=1)
    """Malformed commands in a row before the episode ends."""
    max_repeats: int = Field(3, ge=2)
    """A cycle of 1..4 tool calls with arguments (view, edit, run, find), each with the same
    argument and the same answer, made this many times in a row ends the episode (`repeating`):
    nothing changed, so nothing will."""


class Episode:
    def __init__(
        self,
        prompt: list[int],
        tools: list[Tool],
        max_tokens: int,
        limits: Limits = Limits(),
        writer: TrajectoryWriter | None = None,
        keep: bool = False,
        expected: list[int] | None = None,
        stop_at_divergence: bool = True,
        on_tool_call: Callable[[list[int], list[int]], None] | None = None,
    ):
        """`prompt`: input tokens ([BOS] first). `keep`: hold the trajectory in memory (oracles,
        tests; the runtime streams to `writer` instead). `expected`: the oracle's model tokens;
        `diverged_at` is the index of the first model token that differs from them, and with
        `stop_at_divergence` the episode ends there as `diverged` (exact trajectory decided).
        `on_tool_call(command, observation)`: called after each command with an argument
        (`[RUN]...[END]`, `[FIND]...[END]`: the calls worth showing a person), with their tokens."""
        self.prompt, self.tools, self.limits = prompt, tools, limits
        self.max_tokens, self.writer, self.expected = max_tokens, writer, expected
        self.stop_at_divergence, self.diverged_at = stop_at_divergence, None
        self.on_tool_call = on_tool_call
        self.trajectory = Trajectory() if keep else None
        # Dispatch tables, built once: token id -> tool.
        self._single = {tok: tool for tool in tools for tok in tool.commands}
        self._with_arg = {tok: tool for tool in tools for tok in tool.argument_commands}
        self._open_arg: tuple[int, Tool, list[int]] | None = None  # command, tool, argument so far
        self._calls: deque[int] = deque(maxlen=4 * limits.max_repeats)  # the last calls with arguments, hashed
        self.after_ans = False
        self.output: list[int] = []
        self.n_tokens, self.n_model_tokens, self.format_errors = 0, 0, 0
        self.exit: str | None = None
        self.n_fed = 0  # prompt and observation tokens the runtime has fed to the policy so far
        self.end: dict | None = None  # the end record, once closed
        self.started = time.monotonic()
        self._record_run(prompt, INPUT)
        if self.n_tokens >= max_tokens:  # the question alone is over the limit: never read it
            self.exit = TOKEN_LIMIT

    @property
    def done(self) -> bool:
        return self.exit is not None

    @property
    def exact(self) -> bool:
        """Did the whole trajectory equal the oracle's (`expected`)? A finished episode that never
        diverged produced exactly the expected model tokens, [EOS] last."""
        return self.expected is not None and self.exit == FINISHED and self.diverged_at is None

    @property
    def answer(self) -> str:
        return decode(self.output, specials=False)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def act(self, token: int) -> list[int]:
        """Record one model token, carry it out, and return the observation to force next."""
        if self.expected is not None and self.diverged_at is None:
            i = self.n_model_tokens
            if i >= len(self.expected) or self.expected[i] != token:
                self.diverged_at = i
                if self.stop_at_divergence:  # record the token, carry nothing out (no tool call)
                    self.exit = DIVERGED
                    self.n_model_tokens += 1
                    self._record(token, self._role(token))
                    return []
        self.n_model_tokens += 1
        obs = self._carry_out(token)
        if obs:
            self._record_run(obs, OBSERVATION)
        if self.exit is None:
            if self.n_tokens >= self.max_tokens:
                self.exit = TOKEN_LIMIT
            elif self.format_errors >= self.limits.max_format_errors:
                self.exit = FORMAT_ERRORS
            elif time.monotonic() - self.started > self.limits.max_seconds:
                self.exit = TIME_LIMIT
        return obs

    def _repeating(self) -> bool:
        """Are the last calls one cycle of 1..4 calls, max_repeats times over?"""
        calls, n = list(self._calls), self.limits.max_repeats
        return any(len(calls) >= n * p and len(set(tuple(calls[-(k + 1) * p:len(calls) - k * p]) for k in range(n))) == 1
                   for p in range(1, 5))

    def blocks_on(self, token: int) -> bool:
        """Would `act(token)` call a blocking tool (one that waits on a sandbox)?"""
        return token == END and self._open_arg is not None and self._open_arg[1].blocking

    def _carry_out(self, token: int) -> list[int]:
        if self._open_arg is not None:  # inside an argument: ordinary tokens until [END]
            self._record(token, COMMAND)
            command, tool, argument = self._open_arg
            if token != END:
                argument.append(token)
                return []
            self._open_arg = None
            obs = tool.command(command, argument)
            if self.on_tool_call is not None:
                self.on_tool_call([command, *argument, END], obs)
            self._calls.append(hash((command, *argument, -1, *obs)))
            if self._repeating():
                self.exit = REPEATING
            return self._ok(obs)
        if token in self._single:
            self._record(token, COMMAND)
            return self._ok(self._single[token].command(token))
        if token in self._with_arg:
            self._record(token, COMMAND)
            self._open_arg = (token, self._with_arg[token], [])
            return []
        if token == EOS:
            self._record(token, COMMAND)
            self.exit = FINISHED
            return []
        if (role := self._role(token)) != COMMAND:
            self._record(token, role)
            self.after_ans |= token == ANS
            if role == OUTPUT:
                self.output.append(token)
            for tool in self.tools:
                tool.write(token)
            self.format_errors = 0
            return []
        # Not a token this task's model may produce here.
        self._record(token, COMMAND)
        self.format_errors += 1
        return [ERR]

    def _role(self, token: int) -> int:
        """What `token` is if carried out now: a byte (or the first [ANS]) outside an argument is a
        thought, or output after [ANS]; anything else is (part of) a command."""
        if self._open_arg is None and (token < 256 or (token == ANS and not self.after_ans)):
            return OUTPUT if self.after_ans else THOUGHT
        return COMMAND

    def _ok(self, obs: list[int]) -> list[int]:
        self.format_errors = 0
        return obs

    def _record(self, token: int, role: int) -> None:
        self.n_tokens += 1
        if self.writer is not None:
            self.writer.add(token, role)
        if self.trajectory is not None:
            self.trajectory.tokens.append(token)
            self.trajectory.roles.append(role)

    def _record_run(self, tokens: list[int], role: int) -> None:
        self.n_tokens += len(tokens)
        if self.writer is not None:
            self.writer.add_run(tokens, role)
        if self.trajectory is not None:
            self.trajectory.tokens += tokens
            self.trajectory.roles += [role] * len(tokens)

    def close(self, correct: bool | None, error: str | None = None) -> dict:
        """End record (also written to the trajectory file): exit, answer, verdict, size, time,
        `error` when given, and for an evaluated episode where it left the oracle. Closing again
        returns the first record."""
        if self.end is None:
            end = {
                "exit": self.exit,
                "answer": self.answer,
                "correct": correct,
                "tokens": self.n_tokens,
                "seconds": round(self.seconds, 4),
            }
            if error is not None:
                end["error"] = error
            if self.expected is not None:  # an evaluation: where the model left the oracle (None: never)
                end["diverged_at"] = self.diverged_at
                if self.diverged_at is not None:  # and the oracle's token there (None: the oracle had ended)
                    i = self.diverged_at
                    end["oracle_token"] = decode(self.expected[i : i + 1]) if i < len(self.expected) else None
            self.end = end
            if self.writer is not None:
                self.writer.close(end)
        return self.end

    def state_dict(self) -> dict:
        """Where the episode stands, its tools' state included: with a fresh episode of the same
        problem, `load_state_dict` brings it back (an episode checkpoint)."""
        open_arg = None
        if self._open_arg is not None:
            command, tool, argument = self._open_arg
            open_arg = {"command": command, "tool": self.tools.index(tool), "argument": list(argument)}
        return {
            "n_tokens": self.n_tokens, "n_model_tokens": self.n_model_tokens, "n_fed": self.n_fed,
            "format_errors": self.format_errors, "after_ans": self.after_ans, "output": list(self.output),
            "open_arg": open_arg, "calls": list(self._calls), "seconds": self.seconds,
            "tools": [tool.state_dict() for tool in self.tools],
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("n_tokens", "n_model_tokens", "n_fed", "format_errors", "after_ans"):
            setattr(self, key, state[key])
        self.output = list(state["output"])
        self._calls.clear()
        self._calls.extend(state["calls"])
        arg = state["open_arg"]
        self._open_arg = None if arg is None else (arg["command"], self.tools[arg["tool"]], list(arg["argument"]))
        self.started = time.monotonic() - state["seconds"]
        self.exit = None
        for tool, saved in zip(self.tools, state["tools"], strict=True):
            tool.load_state_dict(saved)

    def abort(self, reason: str, error: BaseException | None = None) -> dict:
        """Close an episode that could not finish: exit `reason` (ERROR, INTERRUPTED) unless it had
        already ended, no verdict, and the exception's type and message (cut at 500 characters)."""
        if self.exit is None:
            self.exit = reason
        detail = None if error is None else f"{type(error).__name__}: {error}"[:500]
        return self.close(None, detail)

