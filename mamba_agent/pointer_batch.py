"""Pointer-memory episodes as tensors: the tool and the episode rules on the model's device.

The runtime (`runtime.py`) serves tools in Python between steps, ~1 us of host time per episode
a step: at batch 1,024 that is 1 ms a step, more than the GPU's step, and it caps one core at
~25 1,000-digit additions a second. For a task whose only tool is pointer memory (addition,
multiplication, Hanoi) everything a step needs fits in a few tensors: the tapes, the pointer
positions, the observation each row must read next. `PointerBatch.advance` is one step of
`Episode.act` + `PointerMemory` for every row at once, in fixed-shape tensor operations with no
host synchronisation, so that a CUDA graph can capture many steps of model and tools together;
on CUDA the same step runs as one Triton kernel (pointer_batch_kernel.py; ~45 launches become
one, ~0.18 -> ~0.03 ms a step at 16,384 rows on the H200).

The rules are Episode's (tests/test_pointer_batch.py drives both with the same random tokens and
compares every token): a byte or the first [ANS] is written to the tape (output after [ANS]), a
pointer command moves or reads (a read answers one forced token, [EDGE] off the tape), [EOS]
finishes, anything else is answered [ERR]; too many malformed tokens in a row or too many tokens
end the episode. The verdict is exact: the output must be the reference, token for token (the
task's checker may accept more, e.g. leading zeros); it is decided as the tokens come.
"""

import numpy as np
import torch
from torch import Tensor

from mamba_agent.vocab import ANS, BOS, EDGE, EOS, ERR, N_POINTERS, PAD, VOCAB_SIZE, pointer_command


class PointerBatch:
    """B episodes in lockstep, one token a row a step. Feed `tokens` to the model, then call
    `advance(model's tokens)`: it returns the next tokens to feed (forced ones where the prompt
    or an observation says so) and updates the tools. Rows that are done keep stepping (their
    tokens are ignored) until every row is done."""

    def __init__(self, prompts: list[list[int]], references: list[list[int]], n_pointers: int,
                 max_tokens: int, max_format_errors: int = 20, device: torch.device | str = "cpu",
                 kernel: bool | None = None):
        """`prompts`: [BOS] + the initial tape, per row; `references`: the expected output tokens.
        `kernel`: advance with the one-launch Triton kernel (pointer_batch_kernel.py) instead of
        PyTorch operations; default: on CUDA."""
        if not 1 <= n_pointers <= N_POINTERS:
            raise ValueError(f"n_pointers must be 1..{N_POINTERS}, got {n_pointers}")
        B, dev, i64 = len(prompts), torch.device(device), torch.int64
        self._kernel_advance = None  # the Triton step, imported once (Triton is not a CPU dependency)
        if dev.type == "cuda" if kernel is None else kernel:
            from mamba_agent.pointer_batch_kernel import advance

            self._kernel_advance = advance
        self.B, self.max_tokens, self.max_format_errors = B, max_tokens, max_format_errors
        # token id -> pointer index (n_pointers: not a pointer command of this task), and move.
        self.pointer_of = torch.full((VOCAB_SIZE,), n_pointers, dtype=i64, device=dev)
        self.move_of = torch.zeros(VOCAB_SIZE, dtype=i64, device=dev)
        for p in range(n_pointers):
            for op, move in (("read", 0), ("left", -1), ("right", 1)):
                self.pointer_of[pointer_command(p + 1, op)] = p
                self.move_of[pointer_command(p + 1, op)] = move
        self.n_pointers = n_pointers
        # State, updated in place (a CUDA graph replays reads and writes of these same buffers).
        # The tape holds the prompt (without [BOS]) and every byte written after it; a written
        # token costs one step, so it never grows beyond max_tokens. Its last column is a sink:
        # rows that do not write this step write there, so writing is one unmasked scatter.
        self.tape = torch.zeros(B, max_tokens + 1, dtype=i64, device=dev)
        self.reference = torch.zeros(B, max(len(r) for r in references) + 1, dtype=i64, device=dev)
        self.pos = torch.zeros(B, n_pointers + 1, dtype=i64, device=dev)  # last column: a sink, as the tape's
        ints = lambda: torch.zeros(B, dtype=i64, device=dev)  # noqa: E731
        flags = lambda: torch.zeros(B, dtype=torch.bool, device=dev)  # noqa: E731
        # What the model reads next: the token (`tokens`, a view of feed[0]); after `advance(...,
        # pair=True)` also the forced token after it in feed[1] where there is one (n_feed 2).
        self.feed = torch.zeros(2, B, dtype=i64, device=dev)
        self.tokens = self.feed[0]
        self.n_feed = torch.ones(B, dtype=torch.int32, device=dev)
        self.prompt_len, self.tape_len, self.reference_len = ints(), ints(), ints()
        self.fed = ints()  # tokens given to the model, [BOS] included
        self.n_tokens = ints()  # Episode.n_tokens: the prompt, model tokens, observations
        self.pending = ints()  # a forced observation, or -1
        self.out_len, self.format_errors = ints(), ints()
        self.after_ans, self.finished, self.done = flags(), flags(), flags()  # finished: emitted [EOS]
        self.out_ok = flags()  # the output so far equals the reference
        self.rows = torch.arange(B, device=dev)
        self.sink = self.tape.shape[1] - 1
        self.load(prompts, references)

    def load(self, prompts: list[list[int]], references: list[list[int]]) -> None:
        """Start new episodes in every row (in place: a captured graph stays valid). Token lists
        or NumPy arrays; `references` no longer than those the batch was made with."""
        if len(prompts) != self.B or any(p[0] != BOS for p in prompts):
            raise ValueError(f"{self.B} prompts, each starting with [BOS]")
        if max(len(p) for p in prompts) > self.max_tokens:
            raise ValueError(f"a prompt is longer than max_tokens ({self.max_tokens})")
        if max(len(r) for r in references) >= self.reference.shape[1]:
            raise ValueError(f"references are at most {self.reference.shape[1] - 1} tokens in this batch")
        width = max(len(p) for p in prompts) - 1  # only the prompts cross from the host; the rest is zeroed here
        self.tape[:, :width].copy_(torch.from_numpy(_padded([p[1:] for p in prompts], width, 0)))
        self.tape[:, width:].zero_()
        self.reference.copy_(torch.from_numpy(_padded(references, self.reference.shape[1], -1)))  # -1: past the end
        self.prompt_len.copy_(torch.tensor([len(p) for p in prompts]))
        self.reference_len.copy_(torch.tensor([len(r) for r in references]))
        self.tape_len.copy_(self.prompt_len - 1)
        self.n_tokens.copy_(self.prompt_len)
        self.tokens.fill_(BOS)
        self.n_feed.fill_(1)
        self.fed.fill_(1)
        self.pending.fill_(-1)
        for t in (self.pos, self.out_len, self.format_errors, self.after_ans, self.finished, self.done):
            t.zero_()
        self.out_ok.fill_(True)

    @property
    def solved(self) -> Tensor:
        """(B,) bool: finished with exactly the reference as output."""
        return self.finished & self.out_ok & (self.out_len == self.reference_len)

    def advance(self, sampled: Tensor, pair: bool = False) -> Tensor:
        """sampled (B,): the model's token after reading what it was fed. Sets and returns the next
        tokens to read. `pair`: where the token after that one is forced too (a prompt token, or
        the observation of a read), take it as well, into feed[1] with n_feed 2 (else feed[1] is
        [PAD] and n_feed 1): the model reads both in one step, and its choice after the first,
        which would be ignored, is never made. Addition's trajectory then takes 26,032 steps
        instead of 38,048 at 1,000 digits."""
        if self._kernel_advance is not None:
            self._kernel_advance(self, sampled.long().contiguous(), pair)
            return self.tokens
        rows, live, sink = self.rows, ~self.done, self.sink
        # The next token is forced by the prompt, then by a pending observation, else the model's.
        in_prompt = self.fed < self.prompt_len
        has_obs = self.pending >= 0
        prompt_token = self.tape[rows, (self.fed - 1).clamp(max=sink)]
        token = torch.where(in_prompt, prompt_token, torch.where(has_obs, self.pending, sampled))
        acts = live & ~in_prompt & ~has_obs  # rows whose model token is carried out now

        # Pointer commands: a read answers the cell (or [EDGE]); a move stops one past either end.
        p = torch.where(acts, self.pointer_of[token], self.n_pointers)
        is_pointer = p < self.n_pointers
        at = self.pos[rows, p]
        on_tape = (at >= 0) & (at < self.tape_len)
        cell = self.tape[rows, at.clamp(0, sink)]
        read = is_pointer & (self.move_of[token] == 0)
        self.pos[rows, p] = torch.minimum((at + self.move_of[token]).clamp(min=-1), self.tape_len)

        # Bytes and the first [ANS] are written to the tape; after [ANS] bytes are the output.
        writes = acts & ((token < 256) | ((token == ANS) & ~self.after_ans))
        self.tape[rows, torch.where(writes, self.tape_len, sink).clamp(max=sink)] = token
        self.tape_len += writes
        outputs = writes & self.after_ans
        expected = self.reference[rows, self.out_len.clamp(max=self.reference.shape[1] - 1)]
        self.out_ok &= ~outputs | (token == expected)
        self.out_len += outputs
        self.after_ans |= writes & (token == ANS)

        eos = acts & (token == EOS)
        malformed = acts & ~is_pointer & ~writes & ~eos
        self.format_errors.copy_(torch.where(malformed, self.format_errors + 1,
                                             torch.where(acts & ~eos, 0, self.format_errors)))
        self.pending.copy_(torch.where(read, torch.where(on_tape, cell, EDGE), torch.where(malformed, ERR, -1)))
        self.finished |= eos
        self.fed += live
        self.n_tokens += acts.long() + read + malformed  # Episode counts an observation when it is made
        self.done |= eos | (self.n_tokens >= self.max_tokens) | (self.format_errors >= self.max_format_errors)
        self.tokens.copy_(token)
        if pair:  # a forced token changes nothing but these (Episode counted it when it was made)
            in_prompt = self.fed < self.prompt_len
            forced = ~self.done & (in_prompt | (self.pending >= 0))
            second = torch.where(in_prompt, self.tape[rows, (self.fed - 1).clamp(max=sink)], self.pending)
            self.feed[1].copy_(torch.where(forced, second, PAD))  # a valid token where it is not read
            self.n_feed.copy_(1 + forced.int())
            self.fed += forced
            self.pending.masked_fill_(forced, -1)
        return self.tokens


def _padded(rows: list[list[int]], width: int, fill: int) -> np.ndarray:
    """(len(rows), width) int64, each row's tokens first, then `fill`."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for r, tokens in enumerate(rows):
        out[r, : len(tokens)] = tokens
    return out


def decode(batch: PointerBatch, step_greedy, max_steps: int | None = None, pair: bool = False) -> int:
    """Step until every row is done: `step_greedy(tokens (B,)) -> (B,)` is the model; with `pair`,
    `step_greedy(feed (2, B), n_feed (B,))`, which reads 1 or 2 tokens a row. Returns the number
    of steps. (The GPU benchmark captures many such steps in one CUDA graph instead.)"""
    steps = 0
    while not batch.done.all() and (max_steps is None or steps < max_steps):
        sampled = step_greedy(batch.feed, batch.n_feed) if pair else step_greedy(batch.tokens)
        batch.advance(sampled, pair)
        steps += 1
    return steps
