"""Tools: what holds everything that grows. A tool never knows the task.

A tool answers command tokens with observation tokens. Single-token commands (`[P1.read]`) are
answered at once; argument commands (`[FIND]`) get the ordinary tokens the model wrote up to
`[END]`. Thought and output tokens are offered to every tool through `write` (memory tools
append them; others ignore them). A command the tool cannot carry out is answered with `[ERR]`
by the episode, never by raising.
"""


SPECIAL_IN_ARGUMENT = "error: the argument holds a special token; give plain text before [END]"


def argument_bytes(argument: list[int] | None) -> bytes | None:
    """The argument of a command that takes text, as bytes; None if it holds a special token."""
    argument = argument or []
    return None if any(t > 255 for t in argument) else bytes(argument)


class Tool:
    """One tool of one episode. A new tool subclasses this; the task that uses it builds it
    (`Task.tools`), so it needs no registration.

    What a tool keeps true:
      - It answers existing command tokens (mamba_agent/vocab.py: pointer commands `[Pk.*]`, or
        `[FIND] [VIEW] [EDIT] [RUN]` with an argument) and no two tools of a task share one. A
        single-token command is named for what it does: a tool read through a pointer answers
        that pointer's commands.
      - Observations are token ids, and they are the only way anything enters the model besides
        the question: deterministic given the commands and writes so far, so that the oracle
        replayed through a fresh tool gets the same ones. An argument command's observation ends
        with `[/OBS]`.
      - A malformed or impossible command is an observation (`[ERR]`, or an `error:` line), never
        an exception; an exception is a bug or an infrastructure failure.
      - One instance per episode: nothing carries over between episodes.
    """

    commands: frozenset[int] = frozenset()  # single-token commands this tool answers
    argument_commands: frozenset[int] = frozenset()  # commands whose argument runs to [END]
    blocking: bool = False  # its calls wait on another process: the runtime runs several at once

    def write(self, token: int) -> None:
        """A thought or output token ([ANS] included); memory tools append it."""

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        """Carry out `token` (with `argument` for argument commands); return the observation."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a saved episode needs to bring a fresh tool of the same problem to this one's
        state: plain values and tensors (torch.load's weights_only loader reads them back)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take the state `state_dict` gave, on a tool built afresh for the same problem."""
