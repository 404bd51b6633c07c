"""Teacher-forced check of the fitted lookup table on fresh oracle trajectories: for each model
token, is the (k=30) context in the table, and is the back-off prediction right? Split by
whether the token is a character of a variable name (a letter and 3 digits) or anything else."""
import random, sys
from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.locality import contexts
from mamba_agent.tasks import get_task

policy, _ = load_checkpoint(sys.argv[1])
policy._lookup()
task = get_task("logical_graph")
rng = random.Random(7)
L, D = set(range(97, 123)), set(range(48, 58))

def in_name(tokens, i):
    for j in range(4):
        s = i - j
        if s >= 0 and s + 4 <= len(tokens) and tokens[s] in L and all(t in D for t in tokens[s + 1:s + 4]):
            if s == 0 or tokens[s - 1] not in L | D:
                return True
    return False

for n in map(int, sys.argv[2].split(",")):
    stats = {True: [0, 0, 0], False: [0, 0, 0]}  # name?: [tokens, context seen, prediction right]
    first_wrong = []
    for _ in range(int(sys.argv[3])):
        t = task.oracle(task.random_problem(rng, n))
        tokens = t.tokens
        pos = [i for i, r in enumerate(t.roles) if r in __import__("mamba_agent.trajectory", fromlist=["x"]).LEARNED_ROLES]
        fw = None
        for i, (ctx, nxt) in zip(pos, contexts(t, policy.config.k)):
            name = in_name(tokens, i)
            s = stats[name]
            s[0] += 1
            s[1] += ctx in policy._table
            ok = policy._predict(ctx) == nxt
            s[2] += ok
            if not ok and fw is None:
                fw = pos.index(i)
        first_wrong.append(fw)
    for name, (a, b, c) in stats.items():
        print(f"n={n} {'name chars' if name else 'other tokens'}: {a} model tokens, context in table {b/a:.1%}, back-off prediction right {c/a:.1%}")
    print(f"n={n} first wrong model token (index) per problem: {first_wrong}")
