"""The paper's ablations of addition: the same problems, without interactive tool use.

Each variant is `addition` (the same operands: 1..5 digits each in training, n each in
evaluation; the same task-file input; a checker that compares values) with another trajectory,
shown here for 12+34:
    addition-nocot         [BOS]12+34= [ANS] 46 [EOS]
    addition-cot-notool    [BOS]12+34= [P1.read] 1 [P1.right] ... token for token `addition`'s
                           trajectory, each token after a `[Pk.read]` the model's own guess
    addition-calculator    [BOS]12+34= [RUN]add(12,34)[END] 46[/OBS] [ANS] 46 [EOS]
None is local (the class docstrings say why; tests/test_addition_ablations.py measures k on
problems that differ in one operand digit; `addition` itself needs 7 at every n), so none is
expected to generalise beyond the training lengths: the paper's point, and what they measure.

All three oracles run through the real episode (`Episode.act`): the calculator's through the
Calculator tool; cot-notool's computes each guess on a private pointer tape (the real
PointerMemory) kept in step with the commands and thoughts, so it is exactly what the
interactive tool would have answered.
"""

import dataclasses

from mamba_agent.episode import Episode
from mamba_agent.tasks import Problem, Task
from mamba_agent.tasks.addition import READ, Addition
from mamba_agent.tools import Tool
from mamba_agent.tools.calculator import Calculator
from mamba_agent.tools.pointer import PointerMemory
from mamba_agent.trajectory import THOUGHT
from mamba_agent.vocab import ANS, END, EOS, OBS_END, RUN, encode, pointer_command


class AdditionNoCoT(Addition):
    """No chain of thought, no tool: `[ANS]`, the sum most significant digit first, as wide as
    column addition makes it (like `addition`), `[EOS]`: 3n + 5 tokens (one more on a final
    carry), n + 2 of them the model's. Not local: the first sum digit depends on every operand
    digit through the carry chain, the last on the last operand digits, which lie behind b and
    the n sum digits already written: k = 2n + 4."""

    name = "addition-nocot"
    version = 1
    oracle_tokens = Task.oracle_tokens  # not addition's trajectory

    def tools(self, problem: Problem) -> list:
        return []

    def max_tokens(self, problem: Problem) -> int:
        # The oracle: prompt (la + lb + 3), [ANS], n or n + 1 digits, [EOS]; double it.
        la, lb = len(problem.input["a"]), len(problem.input["b"])
        return 2 * (la + lb + problem.size) + 20

    def solve(self, episode: Episode, problem: Problem) -> None:
        for token in [ANS, *encode(problem.reference), EOS]:
            episode.act(token)


class Unanswered(Tool):
    """Pointer commands that reach no tape: every move and read answers nothing."""

    def __init__(self, n_pointers: int):
        ops = ("read", "left", "right")
        self.commands = frozenset(pointer_command(p, op) for p in range(1, n_pointers + 1) for op in ops)

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        return []


class SelfAnsweredEpisode(Episode):
    """An episode whose reads the model answers itself: the token right after a read command in
    `reads` is recorded as a thought (whatever token it is: a byte, `[EDGE]`, `[ANS]`, `[EOS]`),
    never forced, never output, never written to a tool. Everything else is `Episode`'s."""

    def __init__(self, *args, reads: frozenset[int], **kwargs):
        self.reads, self._guess_next = reads, False
        super().__init__(*args, **kwargs)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "guess_next": self._guess_next}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._guess_next = state["guess_next"]

    def _carry_out(self, token: int) -> list[int]:
        if self._guess_next:
            self._guess_next = False
            self._record(token, THOUGHT)
            self.format_errors = 0  # a well-formed step, like any thought
            return []
        obs = super()._carry_out(token)
        self._guess_next = token in self.reads and not obs  # a read the task's tool accepted
        return obs


class _MirroredTape:
    """Stands in for the episode in `Addition.solve`: passes every token on, keeps a private
    pointer tape in step with it, and after each read writes the tape's answer as the model's
    next token and returns it, as the interactive tool's observation would have been."""

    def __init__(self, episode: Episode, tape: list[int]):
        self.episode, self.tape = episode, PointerMemory(tape, n_pointers=3)

    def act(self, token: int) -> list[int]:
        self.episode.act(token)
        if token in self.tape.commands:
            guess = self.tape.command(token)
            for t in guess:
                self.episode.act(t)
            return guess
        if token < 256 or token == ANS:  # what the episode writes to memory tools
            self.tape.write(token)
        return []


class AdditionCoTNoTool(Addition):
    """Chain of thought without the tool: `addition`'s trajectory (three pointers), but the
    pointer commands reach no tape (`Unanswered` accepts them and answers nothing), so the token
    after each `[Pk.read]` is the model's own guess of what the tape holds, recorded as a thought
    and learnt like every other model token, whatever it is (`SelfAnsweredEpisode`): the model
    must track the pointers and the tape in its own state. Guesses during P3's walk come after
    `[ANS]` but are thoughts, so the answer is still just the sum digits. 38n + ~30 tokens, all
    but the prompt the model's. Not local: a guessed operand digit lies in the prompt or was last
    guessed ~14 tokens a digit before: k is about 14n. The paper finds it poor even at 5 digits."""

    name = "addition-cot-notool"
    version = 1
    oracle_tokens = Task.oracle_tokens  # not addition's trajectory

    def tools(self, problem: Problem) -> list:
        return [Unanswered(n_pointers=3)]

    def episode(self, problem: Problem, **kwargs) -> Episode:
        kwargs.setdefault("max_tokens", self.max_tokens(problem))
        return SelfAnsweredEpisode(problem.prompt, self.tools(problem), reads=frozenset(READ.values()), **kwargs)

    def solve(self, episode: Episode, problem: Problem) -> None:
        super().solve(_MirroredTape(episode, problem.prompt[1:]), problem)


class AdditionCalculator(Addition):
    """One call of a calculator, `add(a,b)` (`tools/calculator.py` answers the sum), copied out
    after `[ANS]`: 6n + 14 tokens (two more on a final carry), 3n + 10 of them the model's. Not
    local: each digit of the call copies the operand digit 2n + 6 tokens back, each output digit
    the observation digit n + 3 back: k = 2n + 7. The calculator answers without leading zeros,
    so the reference is the plain value (`007+5` gives `12`, where `addition` writes `012`)."""

    name = "addition-calculator"
    version = 1
    oracle_tokens = Task.oracle_tokens  # not addition's trajectory

    def problem(self, input: dict) -> Problem:
        p = super().problem(input)
        return dataclasses.replace(p, reference=p.reference.lstrip("0") or "0")  # the calculator's form

    def tools(self, problem: Problem) -> list:
        return [Calculator()]

    def max_tokens(self, problem: Problem) -> int:
        # The oracle: prompt (la + lb + 3), call (la + lb + 7), observation and output (2n + 5 at
        # most); double it.
        la, lb = len(problem.input["a"]), len(problem.input["b"])
        return 2 * (2 * (la + lb) + 2 * problem.size + 15) + 20

    def solve(self, episode: Episode, problem: Problem) -> None:
        act = episode.act
        for token in [RUN, *encode(f"add({problem.input['a']},{problem.input['b']})")]:
            act(token)
        obs = act(END)
        if obs[-1:] != [OBS_END]:
            raise AssertionError(f"calculator answered {obs!r}")
        for token in [ANS, *obs[:-1], EOS]:  # copy the sum out
            act(token)
