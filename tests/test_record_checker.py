"""The independent checker of the record episodes rejects what it must (wrong, illegal, short,
long answers) and accepts the oracle's."""

import importlib.util
from pathlib import Path

from mamba_agent.tasks import get_task

spec = importlib.util.spec_from_file_location(
    "record_check", Path(__file__).parents[1] / "eval/results/2026-12-07-records/check.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_hanoi_checker_accepts_the_optimal_solution_and_nothing_else():
    task = get_task("hanoi")
    p = task.problem({"disks": [9, 7, 4, 2, 1]})
    answer = p.reference
    assert check.check_hanoi([9, 7, 4, 2, 1], answer)[0]
    moves = answer.split("$")[:-1]
    wrong = {
        "a move dropped": "$".join(moves[:-1]) + "$",
        "two moves swapped": "$".join([moves[1], moves[0]] + moves[2:]) + "$",
        "a wrong size": answer.replace("(1)", "(2)", 1),
        "an extra move there and back": answer + moves[0] + "$" + moves[0][:-2] + moves[0][-1] + moves[0][-2] + "$",
        "garbage": answer + "x",
        "rods renamed": answer.replace("A", "B"),
    }
    for why, bad in wrong.items():
        assert not check.check_hanoi([9, 7, 4, 2, 1], bad)[0], why
    assert not check.check_hanoi([9, 7, 4, 2], answer)[0]  # moves of a disk the tower lacks
