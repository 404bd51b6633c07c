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
    commands: frozenset[int] = frozenset()  # single-token commands this tool answers
    argument_commands: frozenset[int] = frozenset()  # commands whose argument runs to [END]
    blocking: bool = False  # its calls wait on another process: the runtime runs several at once

    def write(self, token: int) -> None:
        """A thought or output token; memory tools append it."""

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        """Carry out `token` (with `argument` for argument commands); return the observation."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a saved episode needs to bring a fresh tool of the same problem to this one's
        state: plain values and tensors (torch.load's weights_only loader reads them back)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take the state `state_dict` gave, on a tool built afresh for the same problem."""
