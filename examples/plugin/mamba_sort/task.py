"""The `sort` task: sort a string of lowercase letters, any length, with two tools.

The tape of a pointer memory starts as `text=`; a SortedTape (tool.py) sorts what is written
before [ANS]. The oracle:
  1. P1 walks the input: `[P1.read] c`, then c again as a thought (so both tools get it), then
     `[P1.right]`, until it reads `=`; then `[ANS]`.
  2. P2 walks the sorted tape: `[P2.read] c`, c as output, `[P2.right]`, until it reads [EDGE];
     then [EOS].
About 8 tokens a letter. Every model token is a function of the last 3 tokens at any length
(`mamba-agent locality --task sort`): after `c` the token before it tells a thought's
`[P1.right]` from an output's `[P2.right]`, and the one before that a copy from a move.
"""

import random
import string

from pydantic import BaseModel, ConfigDict, field_validator

from mamba_agent.episode import Episode
from mamba_agent.tasks import Problem, Task
from mamba_agent.tools.pointer import PointerMemory
from mamba_agent.vocab import ANS, BOS, EDGE, EOS, encode, pointer_command

from mamba_sort.tool import SortedTape

EQUALS = ord("=")
READ1, RIGHT1 = pointer_command(1, "read"), pointer_command(1, "right")
READ2, RIGHT2 = pointer_command(2, "read"), pointer_command(2, "right")


class SortInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    """The string to sort: lowercase letters a-z, at least one."""

    @field_validator("text")
    @classmethod
    def _letters(cls, v: str) -> str:
        if not v or not v.isascii() or not v.islower() or not v.isalpha():
            raise ValueError(f"must be lowercase letters a-z, at least one, got {v[:40]!r}")
        return v


class Sort(Task):
    name = "sort"
    version = 1
    Input = SortInput
    train_max_size = 10  # letters
    max_size = 1_000_000  # ~8M tokens

    def problem(self, input: dict) -> Problem:
        x = SortInput.model_validate(input)
        return Problem(task=self.name, input=x.model_dump(), size=len(x.text),
                       prompt=[BOS] + encode(x.text + "="), reference="".join(sorted(x.text)))

    def random_problem(self, rng: random.Random, size: int) -> Problem:
        return self.problem({"text": "".join(rng.choices(string.ascii_lowercase, k=size))})

    def training_problem(self, rng: random.Random) -> Problem:
        return self.random_problem(rng, rng.randint(1, self.train_max_size))

    def edge_cases(self, size: int) -> list[Problem]:
        descending = "".join(string.ascii_lowercase[::-1][i % 26] for i in range(size))
        return [self.problem({"text": "a" * size}), self.problem({"text": descending})]

    def tools(self, problem: Problem) -> list:
        return [PointerMemory(problem.prompt[1:], n_pointers=1), SortedTape(pointer=2)]

    def max_tokens(self, problem: Problem) -> int:
        return 2 * (8 * problem.size + 6) + 50

    def check(self, problem: Problem, answer: str, tools=()) -> bool:
        return answer == problem.reference

    def solve(self, episode: Episode, problem: Problem) -> None:
        act = episode.act
        while (c := act(READ1)[0]) != EQUALS:
            act(c)
            act(RIGHT1)
        act(ANS)
        while (c := act(READ2)[0]) != EDGE:
            act(c)
            act(RIGHT2)
        act(EOS)
