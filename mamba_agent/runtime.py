"""The agent loop: a policy decodes many episodes in lockstep, tools in the loop.

Two seams, each chosen once per run (`run_episodes`, by `plan`):
- how the episodes are held and advanced: `EpisodeRows`, the tools in Python through
  `Episode.act` (any task), or `TensorRows` (tensor_rows.py), the tools as tensors on the
  model's device (tasks whose one tool is pointer or search memory);
- how the model steps: a stepper of steppers.py (the PyTorch reference, NumPy on the CPU, the
  fused CUDA step, the Triton split step).
`run(rows)` is the loop over both: `step` (the model's part, and with tensor rows the tools', in
one CUDA graph for many steps on CUDA) and `sync` (the host's part: carry out, retire, take new
episodes). Between a step and the next sync the run can be saved (`rows.save()`: each row's
forced tokens still to read, its sampled token, the stepper's state in the policy's layout, the
sampler's generator; the episodes save their own state) and resumed in fresh objects, on either
row form (`run_episodes(resume=...)`). If anything raises in the loop (a tool, the policy) or the
run is interrupted, every live episode is closed with exit `error` or `interrupted`
(`Episode.abort`) before the exception goes on.

EpisodeRows: every live row consumes exactly one token per step: a forced token (its prompt,
then each tool observation) if it has one queued, else the token sampled from its last logits,
which goes to `Episode.act` and may queue an observation. When every live row has forced tokens
queued, the shortest run of them is prefilled in one call. When an episode ends, the next one
takes its row at once (its state row is emptied) if the stepper can reset one row; otherwise (a
KV cache whose positions every row shares) new episodes start when the whole batch is done. The
loop holds the stepper's state and the queues, never the token history: episodes stream their
trajectories to disk.
"""

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor

import torch

from mamba_agent.episode import ERROR, INTERRUPTED, Episode
from mamba_agent.steppers import ChoiceError, Stepper, choose_step, graphed, make_stepper, step_error
from mamba_agent.vocab import PAD

PREFILL_SLICE = 4096  # forced tokens a row prefills per call: a long prompt still reports progress
ROWS = ("python", "tensor")


class Sampler:
    """Greedy (temperature 0) or temperature sampling with its own seeded generator."""

    def __init__(self, temperature: float = 0.0, seed: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> list[int]:  # logits (B, V) -> B token ids
        if self.temperature == 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1).tolist()


class EpisodeRows:
    """Episodes in Python, `stepper.batch_size` rows: the host carries out each row's token
    between two steps (`sync`) and queues what the row must read next."""

    def __init__(self, stepper: Stepper, episodes: Iterable[Episode], sampler: Sampler,
                 on_done: Callable[[Episode], None] | None = None, resume: "SavedLoop | None" = None):
        """`resume`: a saved loop to go on from; `episodes` are then its rows' episodes, restored."""
        B = stepper.batch_size
        self.stepper, self.sampler, self.on_done, self.B = stepper, sampler, on_done, B
        self.pending = iter(episodes)
        self.rows: list[Episode | None] = [None] * B
        self.queues = [deque() for _ in range(B)]  # forced tokens each row reads next
        self.sampled = [PAD] * B  # each row's model token from the last step, not carried out yet
        self.tokens: list[int] | list[list[int]] = []  # what the next step reads: B ids, or B runs to prefill
        self.blocking = False  # has any episode a blocking tool? (else skip looking for its calls)
        self.pool = None  # threads for blocking tool calls, made when first needed
        self.feed = torch.zeros(B, dtype=torch.long, device=stepper.device)
        self.feed_host = self.feed.numpy() if stepper.device.type == "cpu" else None  # views, made once
        self._read = self._read_eager
        if stepper.device.type == "cuda" and stepper.static:  # one graph a step: the copies in and out too
            self.host_in = torch.zeros(B, dtype=torch.long).pin_memory()
            self.host_in_view = self.host_in.numpy()
            self.host_out = torch.zeros(B, dtype=torch.long).pin_memory()
            greedy = sampler.temperature == 0

            def step() -> None:
                self.feed.copy_(self.host_in, non_blocking=True)
                self.logits = None if greedy else stepper.logits(self.feed)
                ids = stepper.greedy(self.feed) if greedy else self.logits.argmax(-1)
                self.host_out.copy_(ids, non_blocking=True)

            self.replay = graphed(step, stepper.device)
            stepper.reset()  # the warm-up stepped it
            self._read = self._read_graph
        if resume is None:
            for r in range(B):
                self._take(r)
            return
        for r in range(B):
            self.rows[r] = next(self.pending, None)
            self.queues[r].extend(resume.queues[r])
            self.blocking |= self.rows[r] is not None and any(tool.blocking for tool in self.rows[r].tools)
        self.sampled = list(resume.sampled)
        stepper.load_state_dict(resume.stepper_state)
        sampler.generator.set_state(resume.sampler_rng)

    def save(self) -> "SavedLoop":
        """The loop between a step and the next sync (the episodes save their own state:
        `Episode.state_dict`)."""
        return SavedLoop([list(q) for q in self.queues], list(self.sampled), self.stepper.state_dict(),
                         self.sampler.generator.get_state())

    def _take(self, r: int) -> None:
        self.rows[r] = next(self.pending, None)
        while self.rows[r] is not None and self.rows[r].done:  # over a limit before its first token
            self._done(self.rows[r])
            self.rows[r] = next(self.pending, None)
        self.queues[r].clear()
        if self.rows[r] is not None:
            self.queues[r].extend(self.rows[r].prompt)
            self.blocking |= any(tool.blocking for tool in self.rows[r].tools)

    def _done(self, ep: Episode) -> None:
        if self.on_done is not None:
            self.on_done(ep)

    def sync(self) -> bool:
        """Between two steps: every row that has no forced token queued carries out its sampled
        one; finished episodes hand their rows on; the next step's tokens are set. False when
        no row is live."""
        rows, queues = self.rows, self.queues
        live = [r for r in range(self.B) if rows[r] is not None]
        if not live:
            return False
        chunk = min(PREFILL_SLICE, *(len(queues[r]) for r in live))
        if chunk > 1:  # every live row has forced tokens: prefill them together
            self.tokens = [[queues[r].popleft() for _ in range(chunk)] if rows[r] else [PAD] * chunk
                           for r in range(self.B)]
            for r in live:
                rows[r].n_fed += chunk
            return True
        tokens = [PAD] * self.B
        # Tool calls that wait on another process (a sandboxed run) go out together on threads,
        # so one episode's 40 ms run does not hold up the next one's.
        calls = [r for r in live if not queues[r] and rows[r].blocks_on(self.sampled[r])] if self.blocking else []
        answered = {}
        if len(calls) > 1:
            self.pool = self.pool or ThreadPoolExecutor(max_workers=min(self.B, 32))
            answered = dict(zip(calls, self.pool.map(lambda r: rows[r].act(self.sampled[r]), calls)))
        for r in live:
            ep, queue = rows[r], queues[r]
            if not queue:
                queue.extend(answered[r] if r in answered else ep.act(self.sampled[r]))
                if ep.done:  # the token that ended it is not fed: the row is free
                    rows[r] = None
                    self._done(ep)
                    if self.stepper.can_reset_rows:
                        self.stepper.reset_row(r)
                        self._take(r)
                        if rows[r] is not None:
                            tokens[r] = queues[r].popleft()
                            rows[r].n_fed += 1
                    continue
                tokens[r] = self.sampled[r]
            else:
                tokens[r] = queue.popleft()
                ep.n_fed += 1
        if all(ep is None for ep in rows):
            if self.stepper.can_reset_rows:
                return False
            self.stepper.reset()  # a new wave on a fresh state
            for r in range(self.B):
                self._take(r)
            return self.sync()
        self.tokens = tokens
        return True

    def step(self) -> None:
        if isinstance(self.tokens[0], list):
            logits = self.stepper.prefill(torch.tensor(self.tokens, device=self.stepper.device))
            self.sampled = self.sampler(logits)
        else:
            self.sampled = self._read(self.tokens)

    def _read_eager(self, tokens: list[int]) -> list[int]:
        if self.feed_host is not None:
            self.feed_host[:] = tokens
        else:
            self.feed.copy_(torch.tensor(tokens))
        if self.sampler.temperature == 0:
            return self.stepper.greedy(self.feed).tolist()
        return self.sampler(self.stepper.logits(self.feed))

    def _read_graph(self, tokens: list[int]) -> list[int]:
        self.host_in_view[:] = tokens
        self.replay()
        torch.cuda.current_stream(self.stepper.device).synchronize()
        return self.host_out.tolist() if self.logits is None else self.sampler(self.logits)

    def live_episodes(self) -> list[Episode]:
        return [ep for ep in self.rows if ep is not None]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def run(rows, on_progress: Callable[..., bool | None] | None = None, progress_seconds: float = 0.1) -> None:
    """Decode every episode of `rows` (EpisodeRows or TensorRows) to its end. `on_progress(rows)`
    runs every `progress_seconds` between a step and the next sync (where `rows.save()` can be
    taken) and once at the end; if it returns True the loop stops there, its episodes left open."""
    last_progress = time.monotonic()
    try:
        while rows.sync():
            rows.step()
            if on_progress is not None and time.monotonic() - last_progress > progress_seconds:
                if on_progress(rows):
                    return
                last_progress = time.monotonic()
    except BaseException as e:  # a tool or the policy raised, or the run was interrupted:
        for ep in rows.live_episodes():  # every live episode still gets its trajectory's end line
            ep.abort(ERROR if isinstance(e, Exception) else INTERRUPTED, e)
        raise
    finally:  # no idle threads left behind
        if hasattr(rows, "close"):
            rows.close()
    if on_progress is not None:
        on_progress(rows)


@dataclass
class SavedLoop:
    """A run between a step and the next sync, in a form either row form resumes from: each
    row's forced tokens still to read, its sampled token (carried out next where its queue is
    empty), the stepper's state in the policy's layout (CPU tensors), the sampler's generator."""

    queues: list[list[int]]
    sampled: list[int]
    stepper_state: dict[str, torch.Tensor]
    sampler_rng: torch.Tensor


def plan(policy, first: Episode | None, device, temperature: float, rows: str = "auto", step: str = "auto"):
    """(rows, step): how the episodes are held and how the model steps, for episodes like
    `first`. `auto` rows: tensors on CUDA where the episode has a tensor form and decoding is
    greedy, else Python; `auto` step: `choose_step`'s. Raises ChoiceError for a choice that
    cannot run."""
    from mamba_agent.tensor_rows import tensor_form

    device = torch.device(device)
    if rows not in ("auto", *ROWS):
        raise ChoiceError(f"unknown rows {rows!r}; valid: auto, {', '.join(ROWS)}")
    formed = first is not None and tensor_form(first) is not None
    if rows == "tensor" and not formed:
        raise ChoiceError("this task's tools have no tensor form (they run in Python): use --rows python")
    if rows == "tensor" and temperature:
        raise ChoiceError("tensor rows decode greedily: use temperature 0 or --rows python")
    static = getattr(policy, "static_state", False)  # rows reset in place, many steps in one graph
    if rows == "tensor" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ChoiceError("tensor rows run on CUDA (elsewhere only in Triton's interpreter, for tests): use --rows python")
    if rows == "tensor" and not static:
        raise ChoiceError("tensor rows need a policy with a fixed-size state (mamba, lstm, gru): use --rows python")
    if rows == "auto":
        rows = "tensor" if formed and device.type == "cuda" and not temperature and static else "python"
    step = choose_step(policy, device, rows == "tensor") if step == "auto" else step
    if why := step_error(step, policy, device):
        raise ChoiceError(why)
    return rows, step


@torch.inference_mode()
def run_episodes(
    policy,
    episodes: Iterable[Episode],
    sampler: Sampler | None = None,
    batch_size: int | None = None,
    on_progress: Callable[..., bool | None] | None = None,
    on_done: Callable[[Episode], None] | None = None,
    progress_seconds: float = 0.1,
    device: torch.device | str | None = None,
    rows: str = "auto",
    step: str = "auto",
    state_dtype: str = "float32",
    resume: SavedLoop | None = None,
) -> Stepper:
    """Decode every episode to its end. `episodes` may be a lazy iterable: each is taken when a
    row frees up. `batch_size` (default: all of them) rows decode together. `rows` and `step`:
    `plan`'s (by default its choice); `state_dtype`: the split step's state. `on_done(episode)`
    runs as each one ends; `on_progress(rows)` as `run` says. `resume`: a saved loop (`rows.save()`)
    to go on from, on either row form; `episodes` are then its rows' episodes, restored. Returns
    the stepper (its state, for measurements)."""
    from mamba_agent.tensor_rows import TensorRows, tensor_form

    sampler = sampler or Sampler()
    if batch_size is None:
        episodes = list(episodes)
        batch_size = max(len(episodes), 1)
    episodes = iter(episodes)
    first = next(episodes, None)
    episodes = itertools.chain([first] if first is not None else [], episodes)
    device = torch.device(device) if device is not None else None
    try:
        rows, step = plan(policy, first, device or _device_of(policy), sampler.temperature, rows, step)
        stepper = make_stepper(step, policy, batch_size, device, state_dtype)
    except ChoiceError as e:  # nothing ran: the episode taken to plan by still ends its trajectory
        if first is not None:
            first.abort(ERROR, e)
        raise
    if rows == "tensor":
        held = TensorRows(stepper, episodes, tensor_form(first), on_done, resume=resume, sampler=sampler)
    else:
        held = EpisodeRows(stepper, episodes, sampler, on_done, resume)
    run(held, on_progress, progress_seconds)
    return stepper


def _device_of(policy) -> torch.device:
    from mamba_agent.steppers import _device_of as device_of

    return device_of(policy)
