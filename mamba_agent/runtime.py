"""The agent loop: a policy decodes many episodes in lockstep, tools in the loop.

The batch has `batch_size` rows. Every live row consumes exactly one token per step: a forced
token (its prompt, then each tool observation) if it has one queued, else the token sampled from
its last logits, which goes to `Episode.act` and may queue an observation. When every live row
has forced tokens queued, the shortest run of them is prefilled in one call. When an episode
ends, the next one takes its row at once (its state row is emptied) if the policy can reset one
row; otherwise (a KV cache whose positions every row shares) new episodes start when the whole
batch is done. The loop holds the decoder's state and the queues, never the token history:
episodes stream their trajectories to disk. If anything raises in the loop (a tool, the policy)
or the run is interrupted (KeyboardInterrupt, SystemExit), every live episode is closed with
exit `error` or `interrupted` (`Episode.abort`) before the exception goes on.
"""

import time
from collections import deque
from dataclasses import dataclass
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from mamba_agent.episode import ERROR, INTERRUPTED, Episode
from mamba_agent.policies.base import Decoder
from mamba_agent.vocab import PAD

PREFILL_SLICE = 4096  # forced tokens a row prefills per call: a long prompt still reports progress


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


def make_decoder(policy, batch_size: int, device=None) -> Decoder:
    """The policy's decoder (a fast one where it has one); a bare module gets the default."""
    if hasattr(policy, "decoder"):
        return policy.decoder(batch_size, device)
    return Decoder(policy, batch_size, device)


@torch.inference_mode()
def run_episodes(
    policy,
    episodes: Iterable[Episode],
    sampler: Sampler | None = None,
    batch_size: int | None = None,
    on_progress: Callable[["Loop"], bool | None] | None = None,
    on_done: Callable[[Episode], None] | None = None,
    progress_seconds: float = 0.1,
    device: torch.device | str | None = None,
    resume: "SavedLoop | None" = None,
) -> Decoder:
    """Decode every episode to its end. `episodes` may be a lazy iterable: each is taken when a
    row frees up. `batch_size` (default: all of them) rows decode together. `on_done(episode)`
    runs as each one ends. `on_progress(loop)` runs every `progress_seconds` between two steps
    (where `loop.save()` can be taken) and once at the end; if it returns True the loop stops
    there, its episodes left open. `resume`: a saved loop to go on from; `episodes` are then
    its rows' episodes, restored. Returns the decoder (its state, for measurements)."""
    sampler = sampler or Sampler()
    if batch_size is None:
        episodes = list(episodes)
        batch_size = max(len(episodes), 1)
    pending = iter(episodes)
    decoder = make_decoder(policy, batch_size, device)
    refill_rows = _can_reset_rows(policy)
    rows: list[Episode | None] = [None] * batch_size
    queues = [deque() for _ in range(batch_size)]
    sampled = [PAD] * batch_size
    pool = None  # threads for blocking tool calls, made when first needed
    last_progress = time.monotonic()

    blocking = False  # has any episode a blocking tool? (else skip looking for its calls)

    def take(r: int) -> None:
        nonlocal blocking
        rows[r] = next(pending, None)
        while rows[r] is not None and rows[r].done:  # over a limit before its first token
            if on_done is not None:
                on_done(rows[r])
            rows[r] = next(pending, None)
        queues[r].clear()
        if rows[r] is not None:
            queues[r].extend(rows[r].prompt)
            blocking |= any(tool.blocking for tool in rows[r].tools)

    try:
        if resume is None:
            for r in range(batch_size):
                take(r)
        else:
            resume.restore(rows, queues, sampled, pending, decoder, sampler)
            blocking = any(tool.blocking for ep in rows if ep is not None for tool in ep.tools)
        while True:
            live = [r for r in range(batch_size) if rows[r] is not None]
            if not live:
                break
            chunk = min(PREFILL_SLICE, *(len(queues[r]) for r in live))
            if chunk > 1:  # every live row has forced tokens: prefill them together
                tokens = [[queues[r].popleft() for _ in range(chunk)] if rows[r] else [PAD] * chunk for r in range(batch_size)]
                for r in live:
                    rows[r].n_fed += chunk
                sampled = sampler(decoder.prefill(tokens))
            else:
                tokens = [PAD] * batch_size
                # Tool calls that wait on another process (a sandboxed run) go out together on
                # threads, so one episode's 40 ms run does not hold up the next one's.
                calls = [r for r in live if not queues[r] and rows[r].blocks_on(sampled[r])] if blocking else []
                answered = {}
                if len(calls) > 1:
                    pool = pool or ThreadPoolExecutor(max_workers=min(batch_size, 32))
                    answered = dict(zip(calls, pool.map(lambda r: rows[r].act(sampled[r]), calls)))
                for r in live:
                    ep, queue = rows[r], queues[r]
                    if not queue:
                        queue.extend(answered[r] if r in answered else ep.act(sampled[r]))
                        if ep.done:  # the token that ended it is not fed: the row is free
                            rows[r] = None
                            if on_done is not None:
                                on_done(ep)
                            if refill_rows:
                                decoder.reset_row(r)
                                take(r)
                                if rows[r] is not None:
                                    tokens[r] = queues[r].popleft()
                                    rows[r].n_fed += 1
                            continue
                        tokens[r] = sampled[r]
                    else:
                        tokens[r] = queue.popleft()
                        ep.n_fed += 1
                if not refill_rows and all(ep is None for ep in rows):
                    decoder = make_decoder(policy, batch_size, device)  # a new wave on a fresh state
                    for r in range(batch_size):
                        take(r)
                    continue
                if all(ep is None for ep in rows):
                    break
                sampled = decoder.step_greedy(tokens) if sampler.temperature == 0 else sampler(decoder.step(tokens))
            if on_progress is not None and time.monotonic() - last_progress > progress_seconds:
                if on_progress(Loop(rows, queues, sampled, decoder, sampler)):
                    return decoder
                last_progress = time.monotonic()
    except BaseException as e:  # a tool or the policy raised, or the run was interrupted:
        for ep in rows:           # every live episode still gets its trajectory's end line
            if ep is not None:
                ep.abort(ERROR if isinstance(e, Exception) else INTERRUPTED, e)
        raise
    finally:  # no idle threads left behind
        if pool is not None:
            pool.shutdown()
    if on_progress is not None:
        on_progress(Loop(rows, queues, sampled, decoder, sampler))
    return decoder


@dataclass
class Loop:
    """The loop between two steps: every row's episode, the forced tokens it has yet to feed,
    the token it samples next (where its queue is empty), the decoder and the sampler."""

    rows: list[Episode | None]
    queues: list[deque]
    sampled: list[int]
    decoder: Decoder
    sampler: Sampler

    def save(self) -> "SavedLoop":
        """What `run_episodes(resume=...)` needs to go on from here (the episodes save their
        own state: `Episode.state_dict`)."""
        return SavedLoop([list(q) for q in self.queues], list(self.sampled), self.decoder.state_dict(),
                         self.sampler.generator.get_state())


@dataclass
class SavedLoop:
    queues: list[list[int]]
    sampled: list[int]
    decoder_state: dict[str, torch.Tensor]
    sampler_rng: torch.Tensor

    def restore(self, rows, queues, sampled, pending, decoder, sampler) -> None:
        for r in range(len(rows)):
            rows[r] = next(pending, None)
            queues[r].extend(self.queues[r])
        sampled[:] = self.sampled
        decoder.load_state_dict(self.decoder_state)
        sampler.generator.set_state(self.sampler_rng)


def _can_reset_rows(policy) -> bool:
    try:
        policy.reset_row(policy.init_state(1), 0)
    except (NotImplementedError, AttributeError):
        return False
    return True
