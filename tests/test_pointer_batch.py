"""PointerBatch (tools and episode rules as tensors) against Episode + PointerMemory, token by token:
its PyTorch operations, and its Triton kernel (in Triton's interpreter without a GPU)."""

import os
import random
from collections import deque

import pytest
import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.episode import FINISHED, Episode, Limits
from mamba_agent.pointer_batch import PointerBatch, decode
from mamba_agent.tasks import get_task
from mamba_agent.tools.pointer import PointerMemory
from mamba_agent.vocab import ANS, BOS, EOS, PAD, SPECIAL, encode, pointer_command
from tests.pair_reference import step_pair

task = get_task("addition")
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel is defined, at its first use
try:
    import triton  # noqa: F401

    KERNEL = [False, True]
except ImportError:
    KERNEL = [False, pytest.param(True, marks=pytest.mark.skip(reason="triton is not installed"))]


def random_tokens(rng: random.Random, n: int) -> list[int]:
    """Model tokens that exercise every rule: commands of P1..P4 (P4 malformed for addition),
    digits, [ANS] (a second one is malformed), other specials (malformed), rarely [EOS]."""
    commands = [pointer_command(p, op) for p in (1, 2, 3, 4) for op in ("read", "left", "right")]
    digits = encode("0123456789+=")
    others = [SPECIAL[s] for s in ("[PAD]", "[BOS]", "[EDGE]", "[ERR]", "[FIND]", "[END]")]
    weights = [(commands, 50), (digits, 35), ([ANS], 3), (others, 12 if rng.random() < 0.5 else 1), ([EOS], 0.15)]
    pools, w = zip(*weights)
    return [rng.choice(rng.choices(pools, w)[0]) for _ in range(n)]


@pytest.mark.parametrize("kernel", KERNEL)
@pytest.mark.parametrize("seed, pair", [(seed, False) for seed in range(6)] + [(seed, True) for seed in range(3)])
def test_same_tokens_and_verdicts_as_episode(seed, pair, kernel):
    """Every token fed, and every verdict, as Episode's; with `pair`, a forced token is taken with
    the one before it exactly when the queue of forced tokens holds one."""
    rng = random.Random(seed)
    B, steps, max_tokens = 16, 400, 300
    problems = [task.random_problem(rng, rng.randint(1, 6)) for _ in range(B)]
    prompts = [p.prompt for p in problems]
    refs = [encode(p.reference) for p in problems]
    limits = Limits(max_format_errors=rng.choice([3, 20]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = PointerBatch(prompts, refs, n_pointers=3, max_tokens=max_tokens,
                         max_format_errors=limits.max_format_errors, device=device, kernel=kernel)
    episodes = [Episode(p, [PointerMemory(p[1:], 3)], max_tokens, limits=limits, keep=True) for p in prompts]
    queues = [deque(p[1:]) for p in prompts]  # tokens to force next: the prompt, then observations
    streams = [random_tokens(rng, steps) for _ in range(B)]
    for step in range(steps):
        sampled = torch.tensor([s[step] for s in streams], device=device)
        fed = batch.advance(sampled, pair).tolist()
        second, n_feed = batch.feed[1].tolist(), batch.n_feed.tolist()
        for r, ep in enumerate(episodes):
            if ep.done:
                continue
            if queues[r]:
                expected = queues[r].popleft()
            else:
                expected = int(sampled[r])
                queues[r].extend(ep.act(expected))
            assert fed[r] == expected, (r, step)
            assert bool(batch.done[r]) == ep.done, (r, step, ep.exit)
            assert int(batch.n_tokens[r]) == ep.n_tokens
            if pair and not ep.done:
                assert n_feed[r] == 1 + bool(queues[r]), (r, step)
                assert second[r] == (queues[r].popleft() if queues[r] else PAD), (r, step)
    assert any(ep.done for ep in episodes) and not all(ep.exit == FINISHED for ep in episodes)
    for r, ep in enumerate(episodes):
        assert bool(batch.finished[r]) == (ep.exit == FINISHED)
        assert int(batch.out_len[r]) == len(ep.output)
        tape = episodes[r].tools[0].tape
        assert batch.tape[r, : len(tape)].tolist() == tape
        assert bool(batch.solved[r]) == (ep.exit == FINISHED and ep.output == refs[r])


def batch_of(problems) -> PointerBatch:
    """The addition problems in a PointerBatch on the CPU, room for the longest's tokens."""
    return PointerBatch([p.prompt for p in problems], [encode(p.reference) for p in problems],
                        n_pointers=3, max_tokens=max(task.max_tokens(p) for p in problems))


def test_shipped_model_solves_through_the_batch():
    """The shipped addition Mamba, stepping through PointerBatch on the CPU, solves what the
    oracle solves in exactly the oracle's number of tokens."""
    policy, _ = load_checkpoint("builtin:addition-mamba")
    rng = random.Random(1)
    problems = [task.random_problem(rng, n) for n in (1, 2, 3, 5, 8, 13, 21, 30)]
    batch = batch_of(problems)
    decoder = policy.decoder(len(problems))
    steps = decode(batch, lambda tokens: decoder.step(tokens.tolist()).argmax(-1))
    assert batch.solved.all()
    lengths = [len(task.oracle(p).tokens) for p in problems]
    assert batch.n_tokens.tolist() == lengths
    assert steps == max(lengths) - 1  # the last token, [EOS], is never read

    # The same batch and state, loaded with new problems (as the GPU benchmark reuses them).
    problems = [task.random_problem(rng, n) for n in (30, 21, 13, 8, 5, 3, 2, 1)]
    batch.load([p.prompt for p in problems], [encode(p.reference) for p in problems])
    decoder.state.conv.zero_(), decoder.state.ssm.zero_()
    decode(batch, lambda tokens: decoder.step(tokens.tolist()).argmax(-1))
    assert batch.solved.all()
    assert batch.n_tokens.tolist() == [len(task.oracle(p).tokens) for p in problems]


def test_shipped_model_solves_in_pairs():
    """Reading each forced token with the one before it (the reference pair step: two steps of
    the policy, the second kept where a row reads two) solves the same problems in the same
    tokens, in fewer steps."""
    policy, _ = load_checkpoint("builtin:addition-mamba")
    rng = random.Random(2)
    problems = [task.random_problem(rng, n) for n in (1, 3, 7, 12)]
    batch = batch_of(problems)
    state = policy.init_state(len(problems))
    with torch.no_grad():
        steps = decode(batch, lambda feed, n_feed: step_pair(policy, feed, n_feed, state).argmax(-1), pair=True)
    assert batch.solved.all()
    lengths = [len(task.oracle(p).tokens) for p in problems]
    assert batch.n_tokens.tolist() == lengths
    assert steps < 0.75 * (max(lengths) - 1)  # 26,032 of 38,048 at 1,000 digits


def test_shipped_model_solves_with_an_8bit_state():
    """The state stored in 8 bits (fp8 e4m3, what SplitStepKernel reads and writes when given a
    float8_e4m3fn state: rounded once a step; the kernel's fp16 update is finer than that) loses
    no addition: the reference pair step with its state rounded after each step. (1,000 digits:
    eval/README.md.)"""
    policy, _ = load_checkpoint("builtin:addition-mamba")
    rng = random.Random(4)
    problems = [task.random_problem(rng, n) for n in (2, 9, 17, 30)]
    batch = batch_of(problems)
    state = policy.init_state(len(problems))

    def step(feed, n_feed):
        logits = step_pair(policy, feed, n_feed, state)
        for s in (state.conv, state.ssm):
            s.copy_(s.to(torch.float8_e4m3fn).float())
        return logits.argmax(-1)

    with torch.no_grad():
        decode(batch, step, pair=True)
    assert batch.solved.all()
    assert batch.n_tokens.tolist() == [len(task.oracle(p).tokens) for p in problems]


def test_a_wrong_output_is_not_solved():
    p = task.problem({"a": "12", "b": "34"})  # 46
    batch = PointerBatch([p.prompt], [encode("47")], n_pointers=3, max_tokens=200)
    it = iter(task.oracle(p).model_tokens())
    decode(batch, lambda tokens: torch.tensor([next(it, EOS)]))
    assert batch.finished.all() and not batch.solved.any()


def test_prompts_must_start_with_bos():
    with pytest.raises(ValueError, match="BOS"):
        PointerBatch([[ANS]], [[]], n_pointers=3, max_tokens=10)
    with pytest.raises(ValueError, match="n_pointers"):
        PointerBatch([[BOS]], [[]], n_pointers=5, max_tokens=10)
