"""Search memory: every promise of tools/search.py's docstring, through Episode.act where it can be."""

import random
import time

from mamba_agent.episode import Episode
from mamba_agent.tools.search import SearchMemory
from mamba_agent.trajectory import COMMAND, OBSERVATION
from mamba_agent.vocab import ANS, BOS, END, ERR, FIND, OBS_END, encode

MEMORY = "x = 1\ny = x + 2\nz = 3\nxx = y\n"


def episode(text: str = MEMORY) -> Episode:
    return Episode([BOS] + encode(text), [SearchMemory(encode(text))], max_tokens=100_000, keep=True)


def find(ep: Episode, pattern) -> list[int]:
    """`[FIND] pattern [END]` through the episode; the observation it answers."""
    assert ep.act(FIND) == []
    for t in encode(pattern) if isinstance(pattern, str) else pattern:
        assert ep.act(t) == []  # the argument is collected, not answered
    return ep.act(END)


def lines(*texts: str) -> list[int]:
    return [t for text in texts for t in encode(text + "\n")] + [OBS_END]


def test_matching_lines_in_memory_order():
    ep = episode()
    assert find(ep, "x") == lines("x = 1", "y = x + 2", "xx = y")
    assert find(ep, "= 3") == lines("z = 3")
    assert find(ep, "y = x") == lines("y = x + 2")  # a substring, spaces included


def test_a_line_matching_twice_is_answered_once():
    assert find(episode(), "xx") == lines("xx = y")
    assert find(episode("aaaa\nb\naa\n"), "a") == lines("aaaa", "aa")


def test_no_match_answers_only_the_close():
    ep = episode()
    assert find(ep, "w") == [OBS_END]
    assert find(ep, "1\ny") == [OBS_END]  # a pattern holding a newline never matches


def test_empty_pattern_is_an_error_observation():
    ep = episode()
    assert find(ep, "") == [ERR, OBS_END]
    assert find(ep, "z") == lines("z = 3")  # and the tool goes on working


def test_thoughts_are_appended_and_searchable():
    ep = episode()
    for t in encode("x := 7\nw := "):
        assert ep.act(t) == []
    assert find(ep, ":=") == lines("x := 7", "w := ")  # the unfinished line too, newline added
    assert find(ep, "x :") == lines("x := 7")
    for t in encode("9\n"):
        ep.act(t)
    assert find(ep, "w") == lines("w := 9")


def test_outputs_and_special_tokens_are_kept_and_matched_by_token():
    ep = episode("a\n")
    ep.act(ANS)  # [ANS] is a thought: appended like any other
    for t in encode("42"):
        ep.act(t)  # outputs are appended too
    assert find(ep, [ANS]) == [ANS] + lines("42")
    assert find(ep, "4") == [ANS] + lines("42")
    assert ep.tools[0].lines == [encode("a"), [ANS] + encode("42")]


def test_commands_and_observations_are_not_appended():
    ep = episode("ab\n")
    find(ep, "ab")
    assert find(ep, "ab") == lines("ab")  # the first find's pattern and answer are not in memory
    assert ep.tools[0].lines == [encode("ab")]
    roles = ep.trajectory.roles
    assert roles.count(COMMAND) == 2 * 4 and roles.count(OBSERVATION) == 2 * 4  # [FIND] a b [END]; a b \n [/OBS]


def test_memory_without_final_newline_searches_its_last_line():
    ep = episode("p\nq r")
    assert find(ep, "r") == lines("q r")
    for t in encode("s\n"):
        ep.act(t)  # written text continues the unfinished line
    assert find(ep, "rs") == lines("q rs")


def test_stray_end_is_answered_by_the_episode_and_nothing_breaks():
    ep = episode()
    assert ep.act(END) == [ERR]  # [END] with no open argument
    assert ep.exit is None and ep.format_errors == 1
    assert find(ep, "z") == lines("z = 3")
    assert ep.format_errors == 0


def test_special_tokens_inside_the_pattern_are_part_of_it():
    ep = episode()
    assert find(ep, [ord("x"), FIND]) == [OBS_END]  # [FIND] inside an argument is a pattern token


def test_many_finds_over_a_large_memory_are_fast():
    """A 1,000-node logical graph makes ~5,000 finds over ~3,000 lines; here 5,000 over 3,000-5,000."""
    rng = random.Random(0)
    names = [f"{chr(97 + i // 1000)}{i % 1000:03d}" for i in rng.sample(range(26_000), 3002)]
    program = [f"{a} = {b} and not {c}" for a, b, c in zip(names, names[1:], names[2:])]
    memory = SearchMemory(encode("\n".join(program) + "\n"))
    start = time.process_time()
    for name, line in zip(names[:3000], program):
        assert memory.command(FIND, encode(f"{name} =")) == lines(line)
    for name in names[:2000]:
        for t in encode(f"{name} := 1\n"):
            memory.write(t)
        assert memory.command(FIND, encode(f"{name} :=")) == lines(f"{name} := 1")
    assert time.process_time() - start < 10  # well under a second on one core
