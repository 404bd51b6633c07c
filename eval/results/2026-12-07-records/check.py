"""Independent checks of the record episodes (2026-12-07): nothing here imports the tasks' code.

    python eval/results/2026-12-07-records/check.py hanoi TRAJECTORY.jsonl
    python eval/results/2026-12-07-records/check.py addition TRAJECTORY.jsonl

hanoi: replays the answer's moves `(size)FROMTO$` on three rods that start as the input tower
(bottom to top, on A): every move takes the top disk of FROM, that disk has the size named, and
it lands on an empty rod or a larger disk; at the end every disk is on C in the input order and
the number of moves is 2^n - 1 (the optimum). addition: the answer, as a Python integer, is
a + b. Prints one JSON line: the verdict, the counts, the SHA-256 of the trajectory file.
"""

import hashlib
import json
import re
import sys


def read(path):
    """(header, end) of a trajectory JSONL file, and its SHA-256, without keeping the token runs."""
    digest, header, end = hashlib.sha256(), None, None
    with open(path, "rb") as f:
        for line in f:
            digest.update(line)
            if header is None:
                header = json.loads(line)
            elif line.startswith(b'{"end"'):
                end = json.loads(line)["end"]
    return header, end, digest.hexdigest()


def check_hanoi(disks, answer):
    rods = {"A": list(disks), "B": [], "C": []}
    moves = re.findall(r"\((\d+)\)([ABC])([ABC])\$", answer)
    if "".join(f"({s}){a}{b}$" for s, a, b in moves) != answer:
        return False, "the answer is not a sequence of (size)FROMTO$ moves", len(moves)
    for i, (size, src, dst) in enumerate(moves):
        size = int(size)
        if src == dst or not rods[src] or rods[src][-1] != size:
            return False, f"move {i}: ({size}){src}{dst} does not take the top disk of {src}", len(moves)
        if rods[dst] and rods[dst][-1] < size:
            return False, f"move {i}: ({size}) onto the smaller disk {rods[dst][-1]}", len(moves)
        rods[dst].append(rods[src].pop())
    if rods["C"] != list(disks):
        return False, "not every disk ends on C", len(moves)
    if len(moves) != 2 ** len(disks) - 1:
        return False, f"{len(moves)} moves, the optimum is {2 ** len(disks) - 1}", len(moves)
    return True, "legal, complete and optimal", len(moves)


def main(kind, path):
    sys.set_int_max_str_digits(0)
    header, end, sha = read(path)
    if end is None:
        verdict = (False, "the trajectory has no end line", 0)
    elif kind == "hanoi":
        verdict = check_hanoi(header["input"]["disks"], end["answer"])
    else:
        a, b = header["input"]["a"], header["input"]["b"]
        ok = end["answer"].isdigit() and int(end["answer"]) == int(a) + int(b)
        verdict = (ok, "the answer is a + b" if ok else "the answer is not a + b", len(a))
    print(json.dumps({"kind": kind, "correct": verdict[0], "why": verdict[1], "count": verdict[2],
                      "tokens": end and end["tokens"], "seconds": end and end["seconds"], "exit": end and end["exit"],
                      "trajectory_sha256": sha, "checkpoint_sha256": header.get("checkpoint_sha256"),
                      "commit": header.get("commit")}))


if __name__ == "__main__":
    main(*sys.argv[1:])
