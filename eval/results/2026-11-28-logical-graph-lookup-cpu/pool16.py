"""Control: the same k=30 back-off table when every name comes from a pool of 16 (a000..a015),
in training (n uniform in 1..10) and in testing (n = 10, 11, 12, 13: 13 is the most 16 names
allow), so the contexts that hold names can be covered."""
import random, time
from mamba_agent.policies.lookup import fit_lookup
from mamba_agent.runtime import run_episodes
from mamba_agent.tasks import get_task
from mamba_agent.tasks.logical_graph import random_program
from mamba_agent.vocab import VOCAB_SIZE

task = get_task("logical_graph")
rng = random.Random(0)
t0 = time.time()
for problems in (1024, 4096):
    train = (task.oracle(task.problem({"program": random_program(rng, rng.randint(1, 10), pool=16)})) for _ in range(problems))
    policy = fit_lookup(train, 30, VOCAB_SIZE, backoff=True)
    print(f"{problems} pool-16 training problems: {policy.config.table_size} contexts, {policy.n_conflicts} conflicts, {time.time() - t0:.0f} s", flush=True)
    test_rng = random.Random(1)
    for n in (10, 11, 12, 13):
        ps = [task.problem({"program": random_program(test_rng, n, pool=16)}) for _ in range(20)]
        eps = [task.episode(p, keep=True) for p in ps]
        run_episodes(policy, eps)
        ok = sum(e.answer == p.reference and e.exit == "finished" and e.trajectory.tokens == task.oracle(p).tokens for e, p in zip(eps, ps))
        print(f"  n={n}: {ok}/20 exact (whole trajectory and answer)", flush=True)
