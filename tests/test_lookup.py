"""The lookup-table policy on the addition task (7-local), through the real runtime.

What was measured (k = 7, training problems of 1..5 digits, docs/locality.md's contexts):
- The table never conflicts at k = 7, and does at k = 4.
- It solves a problem exactly if and only if training covered every context of its oracle
  trajectory, and otherwise predicts [ERR] at the first uncovered one. Contexts that reach back
  into the prompt hold up to six operand digits, so few of them repeat: fitted on 2,000
  problems, 4% of fresh 1..5-digit problems are covered (20% at 64,000), and no problem with
  an operand b of 6 or more digits can be, since its first context is six digits of b and `=`.
- Every other context (8,356 seen in 32,000 problems) is size-independent: 2,000 training
  problems leave 91 of them missing from thirty 20-digit problems (162 from thirty 60-digit
  ones), 8,000 leave 2 (6), and 32,000 cover every one needed by thirty problems each of 20, 60
  and 200 digits. So with back-off (unseen context: its longest seen suffix), which lets the
  table ignore the operand digits before the first command, it solves long problems exactly.
"""

import random

import pytest
import torch

from mamba_agent.checkpoint import load_checkpoint, save_checkpoint
from mamba_agent.episode import DIVERGED, FINISHED, FORMAT_ERRORS
from mamba_agent.locality import contexts
from mamba_agent.policies import LookupConfig, build_policy, fit_lookup
from mamba_agent.runtime import run_episodes
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import COMMAND, INPUT, LEARNED_ROLES, Trajectory
from mamba_agent.vocab import ERR, PAD, VOCAB_SIZE

K = 7  # addition is 7-local (tests/test_addition.py)
task = get_task("addition")


def oracles(n: int, seed: int) -> list[Trajectory]:
    rng = random.Random(seed)
    return [task.oracle(task.training_problem(rng)) for _ in range(n)]


@pytest.fixture(scope="module")
def small_fit():
    return fit_lookup(oracles(2000, seed=0), K, VOCAB_SIZE)


def covered(table: set, trajectory: Trajectory) -> bool:
    return all(c in table for c, _ in contexts(trajectory, K))


def test_conflicts_only_below_the_locality_of_the_task():
    trajectories = oracles(1000, seed=1)
    assert fit_lookup(trajectories, K, VOCAB_SIZE).n_conflicts == 0
    assert fit_lookup(trajectories, 4, VOCAB_SIZE).n_conflicts > 0


def test_fit_keeps_the_most_frequent_token_and_counts_the_conflict():
    a, b, c = 10, 11, 12
    trajectories = [Trajectory([a], [COMMAND]), Trajectory([b], [COMMAND]), Trajectory([b], [COMMAND])]
    trajectories.append(Trajectory([c, a], [INPUT, COMMAND]))
    policy = fit_lookup(trajectories, K, VOCAB_SIZE)
    # Contexts: [PAD] * 7 -> {a: 1, b: 2} (one conflict, b kept); [PAD] * 6 + c -> a.
    assert policy.n_conflicts == 1 and policy.config.table_size == 2
    logits = policy(torch.tensor([[PAD], [c]]))[:, 0]  # fed to the all-[PAD] state: those contexts
    assert logits.argmax(-1).tolist() == [b, a]


def test_predicts_the_table_entry_and_err_where_there_is_none(small_fit):
    trajectory = oracles(1, seed=5)[0]
    table = dict(zip(map(tuple, small_fit.contexts.tolist()), small_fit.next_token.tolist()))
    with torch.no_grad():
        logits = small_fit(torch.tensor([trajectory.tokens]))[0]  # (L, V): row i predicts token i + 1
    padded = [PAD] * K + trajectory.tokens
    expected = [table.get(tuple(padded[i + 1 : i + 1 + K]), ERR) for i in range(len(trajectory))]
    assert logits.argmax(-1).tolist() == expected and ERR in expected
    assert set(logits.unique().tolist()) == {-1e9, 0.0} and (logits == 0).sum(-1).eq(1).all()
    assert small_fit(torch.tensor([[ERR] * 10])).argmax(-1).eq(ERR).all()  # no oracle contains [ERR]


def test_reproduces_its_training_trajectories(small_fit):
    trajectory = oracles(1, seed=0)[0]  # the first of small_fit's 2,000
    predicted = small_fit(torch.tensor([trajectory.tokens]))[0].argmax(-1).tolist()
    learned = [i for i, r in enumerate(trajectory.roles) if r in LEARNED_ROLES]
    assert [predicted[i - 1] for i in learned] == [trajectory.tokens[i] for i in learned]


def test_forward_equals_stepping_and_chunked_prefill(small_fit):
    trajectory = oracles(1, seed=6)[0]
    seq = torch.tensor([trajectory.tokens, trajectory.tokens[::-1]])  # (2, L): one seen, one mostly not
    with torch.no_grad():
        full = small_fit(seq)  # (2, L, V)
        state = small_fit.init_state(2)
        stepped = torch.stack([small_fit.step(seq[:, t], state) for t in range(seq.shape[1])], dim=1)
        prefill_state = small_fit.init_state(2)
        prefilled = torch.cat([small_fit(part, prefill_state) for part in seq.split(3, dim=1)], dim=1)
    assert torch.equal(stepped, full) and torch.equal(prefilled, full)
    assert torch.equal(state, seq[:, -K:]) and torch.equal(prefill_state, state)
    assert small_fit.state_nbytes(state) == 2 * K * 8
    assert (full.argmax(-1) == ERR).any() and (full.argmax(-1) != ERR).any()


def test_in_distribution_solved_exactly_when_covered_and_fails_with_err_otherwise(small_fit):
    rng = random.Random(7)
    problems = [task.training_problem(rng) for _ in range(100)]
    trajectories = [task.oracle(p) for p in problems]
    episodes = [task.episode(p, keep=True, expected=t.model_tokens()) for p, t in zip(problems, trajectories)]
    run_episodes(small_fit, episodes)
    solved = [ep.exit == FINISHED and task.check(p, ep.answer) for ep, p in zip(episodes, problems)]
    table = set(map(tuple, small_fit.contexts.tolist()))
    for ep, t, ok in zip(episodes, trajectories, solved):
        assert ok == covered(table, t)
        if not ok:
            assert ep.exit == DIVERGED and ep.trajectory.tokens[-1] == ERR
    assert 0 < sum(solved) < 20  # measured: 4% of fresh problems are covered after 2,000


@pytest.mark.parametrize("digits", [20, 60])
def test_long_problems_fail_loudly_at_the_first_token(small_fit, digits):
    problem = task.random_problem(random.Random(digits), digits)
    episode = task.episode(problem, keep=True)  # no `expected`: the episode runs to its own end
    run_episodes(small_fit, [episode])
    first = episode.trajectory.tokens[len(problem.prompt)]
    assert episode.exit == FORMAT_ERRORS and first == ERR


@pytest.mark.slow
def test_with_backoff_long_problems_are_solved_exactly():
    """Fitted on 1..5-digit problems only: with back-off the operand digits before the first
    command stop mattering, and 32,000 problems cover every other context, so 20- to 300-digit
    additions come out exactly (measured: 100 of 100 at 1,000 digits, eval/README.md)."""
    rng = random.Random(8)
    problems = [task.random_problem(rng, n) for n in (20, 60, 300)]
    policy = fit_lookup(oracles(32_000, seed=0), K, VOCAB_SIZE, backoff=True)
    assert policy.n_conflicts == 0
    episodes = [task.episode(p, expected=task.oracle(p).model_tokens()) for p in problems]
    run_episodes(policy, episodes)
    assert [ep.exit for ep in episodes] == [FINISHED] * len(problems)
    assert all(task.check(p, ep.answer) for p, ep in zip(problems, episodes))


def test_checkpoint_round_trip(small_fit, tmp_path):
    save_checkpoint(small_fit, tmp_path / "lookup", task="addition", training={"problems": 2000})
    loaded, meta = load_checkpoint(tmp_path / "lookup")
    assert loaded.config == small_fit.config and meta["policy"]["table_size"] == small_fit.config.table_size
    assert torch.equal(loaded.contexts, small_fit.contexts) and torch.equal(loaded.next_token, small_fit.next_token)
    assert loaded.n_conflicts == small_fit.n_conflicts and loaded.num_parameters() == 0
    seq = torch.tensor([oracles(1, seed=9)[0].tokens])
    assert torch.equal(loaded(seq), small_fit(seq))


def test_table_is_rebuilt_after_load_state_dict(small_fit):
    policy = build_policy(small_fit.config.model_dump())  # same sizes, table all [PAD] -> [ERR]
    seq = torch.tensor([oracles(1, seed=10)[0].tokens])
    assert policy(seq).argmax(-1).eq(ERR).all()  # builds the (empty) dict
    policy.load_state_dict(small_fit.state_dict())
    assert torch.equal(policy(seq), small_fit(seq))


def test_config_is_documented_and_checks_the_vocabulary():
    assert all(field.description for field in LookupConfig.model_fields.values())
    with pytest.raises(ValueError, match="ERR"):
        LookupConfig(vocab_size=256, k=K)
