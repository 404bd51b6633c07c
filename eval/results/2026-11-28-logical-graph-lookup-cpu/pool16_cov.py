import random
from mamba_agent.locality import contexts
from mamba_agent.policies.lookup import fit_lookup
from mamba_agent.tasks import get_task
from mamba_agent.tasks.logical_graph import random_program
from mamba_agent.vocab import VOCAB_SIZE
task = get_task("logical_graph")
rng = random.Random(0)
policy = fit_lookup((task.oracle(task.problem({"program": random_program(rng, rng.randint(1, 10), pool=16)})) for _ in range(4096)), 30, VOCAB_SIZE, backoff=True)
policy._lookup()
test_rng = random.Random(1)
for n in (10, 13):
    seen = right = total = 0; first = []
    for _ in range(20):
        t = task.oracle(task.problem({"program": random_program(test_rng, n, pool=16)}))
        f = None
        for i, (ctx, nxt) in enumerate(contexts(t, 30)):
            total += 1; seen += ctx in policy._table; ok = policy._predict(ctx) == nxt; right += ok
            if not ok and f is None: f = i
        first.append(f)
    print(f"n={n}: {total} model tokens, context in table {seen/total:.1%}, back-off right {right/total:.1%}, first wrong token per problem {first}")
