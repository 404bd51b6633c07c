"""Episodes whose one tool has a tensor form, held as tensors on the model's device.

With the tools in Python (runtime.EpisodeRows) the host carries out every token of every row
between two steps: ~1 us an episode a step, more than the GPU's step at batch 1,024, and a host
synchronisation each step. Pointer memory (addition, multiplication, Hanoi; with no pointers,
addition-nocot) and search memory (the logical graph) fit in a few tensors: each row's tape or
memory, its counters, the observation it is owed. `TensorRows.step` runs `steps_per_sync` steps
of the stepper and of `advance` (one Triton kernel: Episode's rules for every row,
tensor_rows_kernel.py) with no host synchronisation, in one CUDA graph on CUDA; between two such
runs `sync` retires finished rows and loads new episodes into them.

The rows take and give back `Episode` objects: a finished row's exit, counts, divergence from
the oracle and output are written into its episode, so that the verdicts (exact trajectory, the
checker's) are computed by the same code as on the Python path. (Its tools are not run: the
tasks with a tensor form have checkers that read only the answer.) An episode that keeps or
writes its trajectory (a writer, `keep`, `on_tool_call`) is watched: its model tokens are logged
on the device and replayed through the episode itself at every sync, so that its trajectory
file is the Python path's, streamed as the run goes, and the device must agree with it (checked).

Between two runs of steps the rows' whole state is `buffers()`, the stepper's state, and on the
host which episode each row holds (`rows`), how far a watched one is replayed (`replayed`) and
the episodes taken but not yet in a row (`waiting`): what a snapshot of the run must hold.
"""

import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from mamba_agent.episode import DIVERGED, FINISHED, FORMAT_ERRORS, REPEATING, TIME_LIMIT, TOKEN_LIMIT, Episode
from mamba_agent.steppers import Stepper, graphed
from mamba_agent.tools.pointer import PointerMemory
from mamba_agent.tools.search import SearchMemory
from mamba_agent.vocab import ANS, BOS, PAD, VOCAB_SIZE, pointer_command

# The per-row state: `ints` (int32) and `flags` (int8), one row of each per field, in this order
# (the kernel takes each field as its own pointer, named `<field>_ptr`).
INT_FIELDS = ("prompt_len", "tape_len", "fed", "n_forced", "n_tokens", "n_model", "format_errors", "ans_at",
              "diverged_at", "expected_len", "max_tokens", "max_format_errors", "max_repeats", "obs_len", "obs_pos",
              "arg_len", "n_calls", "log_slot")
(PROMPT_LEN, TAPE_LEN, FED, N_FORCED, N_TOKENS, N_MODEL, N_FORMAT_ERRORS, ANS_AT, DIVERGED_AT, EXPECTED_LEN,
 MAX_TOKENS, MAX_FORMAT_ERRORS, MAX_REPEATS, OBS_LEN, OBS_POS, ARG_LEN, N_CALLS, LOG_SLOT) = range(len(INT_FIELDS))
FLAG_FIELDS = ("exit", "after_ans", "stop_at_divergence", "arg_open", "arg_nl")
EXIT, AFTER_ANS, STOP_AT_DIVERGENCE, ARG_OPEN, ARG_NL = range(len(FLAG_FIELDS))
# Exit codes (flags[EXIT]): 0 while live; the host sets TIME_LIMIT's; IDLE marks a row with no episode.
EXIT_CODES = {FINISHED: 1, TOKEN_LIMIT: 2, FORMAT_ERRORS: 3, DIVERGED: 4, TIME_LIMIT: 5, REPEATING: 6}
EXIT_NAMES = {code: name for name, code in EXIT_CODES.items()}
IDLE = 7
POINTER, SEARCH = 0, 1
NEWLINE = 10
CALLS = 64  # the calls a row keeps for the repeat rule: 4 limits.max_repeats at most
ROOM = 1.25  # buffers are made this much longer than the longest episode so far: a longer one later still fits


def tensor_form(episode: Episode) -> tuple[int, int] | None:
    """(tool, n_pointers) of an episode whose rules and tools the tensor rows carry out: a plain
    Episode with one pointer memory, one search memory, or no tool; None for any other."""
    if type(episode) is not Episode:  # e.g. addition-cot-notool's, whose reads the model answers
        return None
    match episode.tools:
        case []:
            return POINTER, 0
        case [PointerMemory() as tape]:
            return POINTER, len(tape.positions)
        case [SearchMemory()]:
            return SEARCH, 0
    return None


def _watched(ep: Episode) -> bool:
    return ep.writer is not None or ep.trajectory is not None or ep.on_tool_call is not None


class TensorRows:
    """`stepper.batch_size` rows on the stepper's device: `sync()` between runs of steps, `step()`
    to run them; `on_done(episode)` as each episode ends. Every episode must have `form`."""

    def __init__(self, stepper: Stepper, episodes, form: tuple[int, int], on_done: Callable | None = None,
                 steps_per_sync: int = 128, watch_slots: int = 64, resume=None, sampler=None):
        """`resume`: a SavedLoop (runtime.py) to go on from, `episodes` then its rows' episodes,
        restored; `sampler`: only saved and restored with the run (the rows decode greedily)."""
        self.stepper, self.B, self.device = stepper, stepper.batch_size, stepper.device
        self.tool, self.n_pointers = form
        self.pairs = stepper.pairs
        self.pending = iter(episodes)
        self.waiting: deque[Episode] = deque()
        self.on_done, self.steps_per_sync = on_done, steps_per_sync
        self.rows: list[Episode | None] = [None] * self.B
        # Per row, for the host's checks between runs of steps (in NumPy: 32,768 rows each sync).
        self.occupied = np.zeros(self.B, bool)
        self.started, self.max_seconds = np.zeros(self.B), np.full(self.B, np.inf)
        self.replayed = [0] * self.B
        self.slots = list(range(min(watch_slots, self.B)))  # free rows of the log
        self.slot_of: dict[int, int] = {}  # watched row -> its log row
        self.width = self.expected_width = 0  # no buffers yet
        self._run: Callable[[], None] | None = None
        self.resume, self.generator = resume, (sampler.generator if sampler else torch.Generator())

    def buffers(self) -> dict[str, torch.Tensor]:
        """Every tensor of the rows' state (what `advance` reads and writes)."""
        names = ("ints", "flags", "tape", "obs", "expected", "log", "pos", "arg", "line", "calls", "feed", "n_feed")
        return {name: getattr(self, name) for name in names}

    def _build(self, width: int, expected_width: int) -> None:
        """Buffers for episodes of up to `width` - 1 tokens and oracles of up to `expected_width`
        - 1 model tokens, every row idle; then the steps captured (their warm-up runs on idle rows)."""
        B, dev, i16 = self.B, self.device, torch.int16
        search = self.tool == SEARCH
        self.width, self.expected_width = width, expected_width
        self.ints = torch.zeros(len(INT_FIELDS), B, dtype=torch.int32, device=dev)
        self.flags = torch.zeros(len(FLAG_FIELDS), B, dtype=torch.int8, device=dev)
        self.flags[EXIT] = IDLE
        self.tape = torch.zeros(B, width, dtype=i16, device=dev)  # the prompt (no [BOS]), then what is written
        # the observation owed (a restored run's queue too: what was fed and owed when it was saved)
        self.obs = torch.zeros(B, 2 * width + 4 if search else 4, dtype=i16, device=dev)
        self.arg = torch.zeros(B, width if search else 1, dtype=i16, device=dev)  # the open argument
        self.line = torch.zeros(B, width if search else 1, dtype=torch.int8, device=dev)  # a search's line marks
        # the last calls with arguments (searches), hashed: Episode's repeat rule
        self.calls = torch.zeros(B, CALLS if search else 1, dtype=torch.int32, device=dev)
        self.expected = torch.zeros(B, expected_width, dtype=i16, device=dev)
        self.log = torch.zeros(max(len(self.slots) + len(self.slot_of), 1), width, dtype=i16, device=dev)
        self.pos = torch.zeros(B, self.n_pointers + 1, dtype=torch.int32, device=dev)  # last column: a sink
        # token id -> pointer index (n_pointers: not a pointer command of this task), and move.
        self.pointer_of = torch.full((VOCAB_SIZE,), self.n_pointers, dtype=torch.int32, device=dev)
        self.move_of = torch.zeros(VOCAB_SIZE, dtype=torch.int32, device=dev)
        for p in range(self.n_pointers):
            for op, move in (("read", 0), ("left", -1), ("right", 1)):
                self.pointer_of[pointer_command(p + 1, op)] = p
                self.move_of[pointer_command(p + 1, op)] = move
        self.feed = torch.full((2, B), PAD, dtype=torch.long, device=dev)  # what the model reads next
        self.n_feed = torch.ones(B, dtype=torch.int32, device=dev)
        self._run = self._steps
        if dev.type == "cuda" and self.stepper.static:
            self._run = graphed(self._steps, dev)
            self.stepper.reset()  # the warm-up stepped it

    def _steps(self) -> None:
        from mamba_agent.tensor_rows_kernel import advance  # Triton

        for _ in range(self.steps_per_sync):
            advance(self, self.stepper.greedy(self.feed if self.pairs else self.feed[0], self.n_feed))

    def step(self) -> None:
        self._run()

    def sync(self) -> bool:
        """Between runs of steps: watched rows replayed, rows over their time limit ended,
        finished rows out (their episodes completed, `on_done`), new episodes in. False when
        nothing is left to run."""
        if self.resume is not None:
            self._restore(self.resume)
            self.resume = None
        if self.occupied.any():
            exits = self.flags[EXIT].cpu().numpy()  # waits for the steps
            over = np.flatnonzero(self.occupied & (exits == 0) & (time.monotonic() - self.started > self.max_seconds))
            if len(over):
                self.flags[EXIT, torch.from_numpy(over).to(self.device)] = exits[over] = EXIT_CODES[TIME_LIMIT]
            self._replay(list(self.slot_of), exits)
            self._retire(np.flatnonzero(self.occupied & (exits != 0)).tolist())
        self._take()
        return bool(self.occupied.any())

    def _replay(self, rows: list[int], exits: np.ndarray) -> None:
        """Watched rows: their new model tokens through their episodes (trajectory, tool calls)."""
        if not rows:
            return
        counts = self.ints[[N_MODEL, N_FORCED]][:, rows].tolist()
        for r, n_model, n_forced in zip(rows, *counts):
            ep = self.rows[r]
            for token in self.log[self.slot_of[r], self.replayed[r] : n_model].tolist():
                if not ep.done:
                    ep.act(token)
            self.replayed[r], ep.n_fed = n_model, n_forced
            if ep.done and exits[r] == 0:  # it ended first (its clock; a repeat whose start a restore forgot)
                self.flags[EXIT, r] = exits[r] = EXIT_CODES[ep.exit]

    def _retire(self, rows: list[int]) -> None:
        if not rows:
            return
        idx = torch.tensor(rows, device=self.device)
        ints, flags = self.ints[:, idx].cpu().numpy(), self.flags[:, idx].cpu().numpy()  # (fields, n)
        start = ints[ANS_AT] + 1  # the output: what was written after [ANS]
        length = np.where(ints[ANS_AT] >= 0, ints[TAPE_LEN] - start, 0)
        cols = torch.from_numpy(start).to(self.device)[:, None] + torch.arange(int(length.max()), device=self.device)
        outputs = self.tape[idx[:, None], cols.clamp(max=self.width - 1)].cpu().numpy()
        self.flags[EXIT, idx] = IDLE
        for i, r in enumerate(rows):
            ep, exit = self.rows[r], EXIT_NAMES[int(flags[EXIT, i])]
            if r in self.slot_of:  # replayed: the episode decided, and the device must agree where it saw it all
                if ep.n_model_tokens == ints[N_MODEL, i] and exit != TIME_LIMIT and (
                        ep.exit != exit or ep.n_tokens != ints[N_TOKENS, i]):
                    raise RuntimeError(f"tensor rows and Episode disagree: the episode ended {ep.exit} at "
                                       f"{ep.n_tokens} tokens, the row {exit} at {ints[N_TOKENS, i]}")
                self.slots.append(self.slot_of.pop(r))
            else:
                ep.exit, ep.output, ep.after_ans = exit, outputs[i, : length[i]].tolist(), bool(flags[AFTER_ANS, i])
                ep.n_tokens, ep.n_model_tokens = int(ints[N_TOKENS, i]), int(ints[N_MODEL, i])
                ep.format_errors = int(ints[N_FORMAT_ERRORS, i])
                ep.diverged_at = int(ints[DIVERGED_AT, i]) if ints[DIVERGED_AT, i] >= 0 else None
            ep.n_fed = int(ints[N_FORCED, i])
            self.rows[r], self.occupied[r] = None, False
            if self.on_done is not None:
                self.on_done(ep)

    def _fits(self, ep: Episode) -> bool:
        return ep.max_tokens < self.width and (0 if ep.expected is None else len(ep.expected)) < self.expected_width

    def _take(self) -> None:
        """New episodes into free rows, in order, as far as they fit the buffers and the log; the
        first that does not waits, with those after it, and when every row is free the buffers
        are made again to fit them."""
        free = np.flatnonzero(~self.occupied).tolist()
        batch = []
        while len(batch) < len(free) and (ep := self.waiting.popleft() if self.waiting else next(self.pending, None)):
            if ep.done:  # over a limit before its first token
                if self.on_done is not None:
                    self.on_done(ep)
                continue
            if tensor_form(ep) != (self.tool, self.n_pointers):
                raise ValueError("every episode of a TensorRows run must have the tensor form it was made for")
            if 4 * ep.limits.max_repeats > CALLS:
                raise ValueError(f"tensor rows keep {CALLS} calls: limits.max_repeats at most {CALLS // 4}")
            batch.append(ep)
        if len(free) == self.B and batch and not all(map(self._fits, batch)):
            longest = max(ep.max_tokens for ep in batch) + 1
            oracle = max(0 if ep.expected is None else len(ep.expected) for ep in batch) + 1
            self._build(max(self.width, int(ROOM * longest)), max(self.expected_width, int(ROOM * oracle)))
        taken = []
        for i, ep in enumerate(batch):
            if not self._fits(ep) or (_watched(ep) and not self.slots):
                self.waiting.extendleft(reversed(batch[i:]))
                break
            taken.append((free[len(taken)], ep))
            if _watched(ep):
                self.slot_of[taken[-1][0]] = self.slots.pop()
        if taken:
            self._load(taken)

    def _load(self, taken: list[tuple[int, Episode]]) -> None:
        rows, eps = [r for r, _ in taken], [ep for _, ep in taken]
        idx, n = torch.tensor(rows, device=self.device), len(rows)
        prompt_len = np.array([len(ep.prompt) for ep in eps])
        tape = np.zeros((n, prompt_len.max() - 1), np.int16)
        for i, ep in enumerate(eps):
            tape[i, : prompt_len[i] - 1] = ep.prompt[1:]
        self.tape[idx, : tape.shape[1]] = torch.from_numpy(tape).to(self.device)
        expected_len = np.array([-1 if ep.expected is None else len(ep.expected) for ep in eps])
        if expected_len.max() > 0:
            expected = np.zeros((n, expected_len.max()), np.int16)
            for i, ep in enumerate(eps):
                if ep.expected is not None:
                    expected[i, : expected_len[i]] = ep.expected
            self.expected[idx, : expected.shape[1]] = torch.from_numpy(expected).to(self.device)
        ints = np.zeros((len(INT_FIELDS), n), np.int32)  # counters 0, obs_len 0: no observation owed
        ints[PROMPT_LEN], ints[TAPE_LEN], ints[N_TOKENS] = prompt_len, prompt_len - 1, prompt_len
        ints[FED] = ints[N_FORCED] = 1  # [BOS] is read first
        ints[ANS_AT] = ints[DIVERGED_AT] = -1
        ints[EXPECTED_LEN] = expected_len
        ints[MAX_TOKENS] = [ep.max_tokens for ep in eps]
        ints[MAX_FORMAT_ERRORS] = [ep.limits.max_format_errors for ep in eps]
        ints[MAX_REPEATS] = [ep.limits.max_repeats for ep in eps]
        ints[LOG_SLOT] = [self.slot_of.get(r, -1) for r in rows]
        self.ints[:, idx] = torch.from_numpy(ints).to(self.device)
        flags = np.zeros((len(FLAG_FIELDS), n), np.int8)  # exit 0: live
        flags[STOP_AT_DIVERGENCE] = [ep.stop_at_divergence for ep in eps]
        self.flags[:, idx] = torch.from_numpy(flags).to(self.device)
        self.pos[idx] = 0
        self.feed[0, idx], self.feed[1, idx], self.n_feed[idx] = BOS, PAD, 1
        self.stepper.reset_rows(idx)
        for r, ep in taken:
            self.rows[r], self.replayed[r], ep.n_fed = ep, 0, 1
            self.occupied[r], self.started[r], self.max_seconds[r] = True, ep.started, ep.limits.max_seconds

    def save(self):
        """The run between a step and the next sync, as runtime.SavedLoop (either row form resumes
        from it): watched rows replayed first (their episodes save their own state, tools
        included); a row's queue is what it reads next (fed but not read yet, then what its
        prompt or observation still owes), its sampled token none (its queue is never empty)."""
        from mamba_agent.runtime import SavedLoop

        occupied = np.flatnonzero(self.occupied).tolist()
        if any(r not in self.slot_of for r in occupied):
            raise NotImplementedError("tensor rows save only watched episodes (with a trajectory file)")
        self._replay(occupied, self.flags[EXIT].cpu().numpy())
        ints = self.ints.cpu().numpy()
        feed, n_feed = self.feed.cpu().tolist(), self.n_feed.tolist()
        queues = [[] for _ in range(self.B)]
        for r in occupied:
            fed, prompt_len = ints[FED, r], ints[PROMPT_LEN, r]
            queue = feed[0][r : r + 1] + (feed[1][r : r + 1] if n_feed[r] == 2 else [])
            queue += self.rows[r].prompt[fed:prompt_len] if fed < prompt_len else self.obs[r, ints[OBS_POS, r] : ints[OBS_LEN, r]].tolist()
            queues[r] = queue
        return SavedLoop(queues, [PAD] * self.B, self.stepper.state_dict(), self.generator.get_state())

    def _restore(self, saved) -> None:
        """Rows 0, 1, ... take the restored episodes and where they stood (their tools' memory,
        counts, an open argument); each row's queue is owed to it first, and a row with none
        carries out its sampled token in one step of the tools alone. The repeat rule's last calls
        start empty (the episode's are Python hashes): a watched episode still applies its own."""
        from mamba_agent.tensor_rows_kernel import advance

        taken = [(r, ep) for r in range(self.B) if (ep := next(self.pending, None)) is not None]
        eps = [ep for _, ep in taken]
        self._build(int(ROOM * max(ep.max_tokens + 1 for ep in eps)),
                    int(ROOM * max(1 + (0 if ep.expected is None else len(ep.expected)) for ep in eps)))
        for r, ep in taken:
            self.slot_of[r] = self.slots.pop()
        self._load(taken)
        self.stepper.load_state_dict(saved.stepper_state)
        self.generator.set_state(saved.sampler_rng)
        for r, ep in taken:
            (tool,) = ep.tools or [None]
            memory = ep.prompt[1:] if tool is None else tool.state_dict()["tape" if self.tool == POINTER else "text"].tolist()
            queue, prompt_len = saved.queues[r], len(ep.prompt)
            self.tape[r, : len(memory)] = torch.tensor(memory, dtype=torch.int16)
            if self.tool == POINTER and self.n_pointers:
                self.pos[r, : self.n_pointers] = torch.tensor(tool.positions)
            values = {TAPE_LEN: len(memory), N_TOKENS: ep.n_tokens, N_MODEL: ep.n_model_tokens,
                      N_FORMAT_ERRORS: ep.format_errors, N_FORCED: ep.n_fed,
                      DIVERGED_AT: -1 if ep.diverged_at is None else ep.diverged_at,
                      ANS_AT: memory.index(ANS, prompt_len - 1) if ep.after_ans else -1}
            if ep.n_model_tokens == 0:  # still reading the prompt: the queue is what is left of it
                values[FED] = prompt_len - len(queue)
            else:
                values |= {FED: prompt_len, OBS_LEN: len(queue), OBS_POS: 0}
                self.obs[r, : len(queue)] = torch.tensor(queue, dtype=torch.int16)
            if ep._open_arg is not None:
                argument = ep._open_arg[2]
                values[ARG_LEN] = len(argument)
                self.arg[r, : len(argument)] = torch.tensor(argument, dtype=torch.int16)
                self.flags[ARG_OPEN, r], self.flags[ARG_NL, r] = 1, int(NEWLINE in argument)
            for field, value in values.items():
                self.ints[field, r] = value
            self.flags[AFTER_ANS, r] = int(ep.after_ans)
            self.replayed[r] = ep.n_model_tokens
        advance(self, torch.tensor(saved.sampled, device=self.device))

    def live_episodes(self) -> list[Episode]:
        return [ep for ep in self.rows if ep is not None] + list(self.waiting)
