"""`mamba-agent view`: a self-contained page, checked in a real headless Chromium (Debian's).

A missing Chromium FAILS these tests (CI installs it: sandboxes/setup_ci.sh); a developer without
one can set MAMBA_AGENT_BROWSER_OPTIONAL=1 to skip them instead.
"""

import io
import json
import os
import random
import re

import pytest
from PIL import Image

from mamba_agent.cli import main
from mamba_agent.eval.browser import Chromium
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import OBSERVATION, OUTPUT, THOUGHT, TrajectoryWriter, read_trajectory
from mamba_agent.view import render
from mamba_agent.vocab import SPECIAL
from tests.scripted import record

READY = "document.body.dataset.ready"


@pytest.fixture(scope="module")
def browser():
    try:
        chromium = Chromium(width=1280, height=800)
    except FileNotFoundError as e:
        if os.environ.get("MAMBA_AGENT_BROWSER_OPTIONAL") == "1":
            pytest.skip(f"{e} (MAMBA_AGENT_BROWSER_OPTIONAL=1)")
        pytest.fail(f"{e}; or set MAMBA_AGENT_BROWSER_OPTIONAL=1 to skip")
    yield chromium
    chromium.close()
    assert chromium.errors == []  # no uncaught JavaScript exception in any page


def page(tmp_path, name, task, problem, capsys, **kwargs) -> tuple[str, dict]:
    """Record the oracle to a file, `mamba-agent view` it; (the page's file URL, the end line)."""
    path = tmp_path / f"{name}.jsonl"
    end = record(task, problem, path, **kwargs)
    assert main(["view", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(path.with_suffix(".html"))
    return "file://" + out, end


def pixels(browser, element: str) -> dict[tuple, int]:
    """Colour -> pixel count in the screenshot, inside `element`'s box."""
    box = browser.eval(f"(r => [r.left, r.top, r.right, r.bottom])(document.querySelector('{element}').getBoundingClientRect())")
    image = Image.open(io.BytesIO(browser.screenshot())).convert("RGB").crop(tuple(round(x) for x in box))
    return {colour: count for count, colour in image.getcolors(1 << 24)}


def rgb(css: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


def test_the_page_is_self_contained(tmp_path):
    task = get_task("hanoi")
    problem = task.problem({"disks": [3, 2, 1]})
    record(task, problem, tmp_path / "t.jsonl")
    html = render(*read_trajectory(tmp_path / "t.jsonl"))
    assert html.startswith("<!doctype html>") and "__DATA__" not in html
    assert not re.search(r"\b(src|href)\s*=|url\(|@import|https?:|<link", html)  # nothing to fetch


def test_out_errors_are_one_line_and_exit_2(tmp_path, capsys):
    task = get_task("hanoi")
    path = tmp_path / "t.jsonl"
    record(task, task.problem({"disks": [2, 1]}), path)
    assert main(["view", str(path), "--out", str(tmp_path / "page.html")]) == 0
    assert (tmp_path / "page.html").read_text().startswith("<!doctype html>")
    capsys.readouterr()
    for out, why in [(tmp_path, "Is a directory"), (tmp_path / "no" / "x.html", "No such file"),
                     (path, "that is the trajectory itself")]:
        assert main(["view", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"mamba-agent view: error: --out {out}: {why}" in err


def test_roles_in_colour_answer_and_verdict(browser, tmp_path, capsys):
    task = get_task("hanoi")
    url, end = page(tmp_path, "hanoi", task, task.problem({"disks": [83, 61, 47, 30, 12, 5]}), capsys)
    browser.open(url, ready=READY)
    assert browser.eval("document.querySelector('.badge').textContent") == "correct"
    assert browser.eval("document.getElementById('exit').textContent") == "finished"
    assert browser.eval("document.getElementById('answer').textContent") == end["answer"][:400] + "…"
    browser.eval("document.getElementById('more').click()")  # a long answer is shown whole on request
    assert browser.eval("document.getElementById('answer').textContent") == end["answer"]
    assert browser.eval("document.title") == "hanoi · correct · finished"
    # Only the rows on screen are built.
    shown, rows = browser.eval("[document.querySelectorAll('#rows .row').length, nRows()]")
    assert 20 < shown <= 800 // 20 + 1 and rows > 5 * shown

    colours = [rgb(browser.eval(f"getComputedStyle(document.querySelector('.legend .sw.r{r}')).color")) for r in range(5)]
    backgrounds = [rgb(browser.eval(f"(e => (document.body.appendChild(e), getComputedStyle(e).backgroundColor))"
                                    f"(Object.assign(document.createElement('span'), {{className: 'r{r}'}}))"))
                   for r in range(5)]
    assert len(set(colours)) == 5 and len(set(backgrounds)) == 5  # five roles, five colours
    top = pixels(browser, "#scroller")
    assert all(top.get(backgrounds[r], 0) > 300 for r in range(4))  # input, thought, command, observation
    assert top.get(backgrounds[OUTPUT], 0) == 0  # the output comes at the end
    browser.eval("document.getElementById('toanswer').click()")
    assert pixels(browser, "#scroller").get(backgrounds[OUTPUT], 0) > 300


def test_search_and_folded_runs(browser, tmp_path, capsys):
    task = get_task("addition")
    problem = task.random_problem(random.Random(0), 2000)  # a 4,003-token prompt: folded
    url, _ = page(tmp_path, "addition", task, problem, capsys)
    header, traj, end = read_trajectory(tmp_path / "addition.jsonl")
    browser.open(url, ready=READY)

    fold = browser.eval("document.querySelector('.fold').textContent")
    hidden = int(re.match(r"▸ ([\d,]+) more input tokens", fold)[1].replace(",", ""))
    assert 3_000 < hidden < 4_003
    browser.eval("document.querySelector('.fold').click()")
    assert browser.eval("document.querySelectorAll('.fold').length") == 0

    def find(query: str, scope: int = -1) -> str:
        browser.eval(f"document.getElementById('scope').value = '{scope}';"
                     f"(q => (q.value = {json.dumps(query)}, q.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter'}}))))"
                     "(document.getElementById('q'))")
        return browser.eval("document.getElementById('count').textContent")

    reads = traj.tokens.count(SPECIAL["[P3.read]"])
    assert find("[p3.READ]") == f"1 / {reads:,}"  # a special token by name, case folded
    assert browser.eval("document.querySelector('.mc').textContent") == "P3.read"
    browser.eval("document.getElementById('next').click()")
    assert browser.eval("document.getElementById('count').textContent") == f"2 / {reads:,}"
    browser.eval("document.getElementById('prev').click(); document.getElementById('prev').click()")
    assert browser.eval("document.getElementById('count').textContent") == f"{reads:,} / {reads:,}"
    answer, part = traj.output_text(), traj.output_text()[990:1000]
    assert answer == end["answer"] and find(part, scope=OUTPUT).endswith(f" / {answer.count(part)}")
    assert find("no such text") == "no match"


def test_the_token_that_left_the_oracle_and_an_unfinished_run(browser, tmp_path, capsys):
    task = get_task("addition")
    problem = task.problem({"a": "905", "b": "96"})
    url, end = page(tmp_path, "diverged", task, problem, capsys, expected=task.oracle(problem).model_tokens(), wrong_at=20)
    browser.open(url, ready=READY)
    browser.eval("document.getElementById('todiverged').click()")
    assert browser.eval("document.querySelector('.dv').textContent") == "7"
    note = browser.eval("document.getElementById('offnote').textContent")
    header, traj, _ = read_trajectory(tmp_path / "diverged.jsonl")
    assert end["diverged_at"] == 20 and traj.roles[-1] != OBSERVATION  # the 21st model token is the last one
    assert note == f'left the oracle at token {len(traj) - 1}: the model wrote "7", where the oracle has "[P2.read]"'
    assert pixels(browser, "#scroller").get(rgb(browser.eval("getComputedStyle(document.querySelector('.dv')).backgroundColor")), 0) > 20

    lines = (tmp_path / "diverged.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_text("".join(lines[:-1]))
    assert main(["view", str(tmp_path / "cut.jsonl")]) == 0
    browser.open("file://" + capsys.readouterr().out.strip(), ready=READY)
    assert browser.eval("document.querySelector('.badge').textContent") == "unfinished"
    assert browser.eval("document.getElementById('exit')") is None


def test_bytes_shown_as_characters_utf8_glyphs_or_chips(browser, tmp_path, capsys):
    path = tmp_path / "bytes.jsonl"
    writer = TrajectoryWriter(path, {"task": "addition", "input": {}})
    for token in [SPECIAL["[BOS]"], *"héllo ✓ 😀".encode(), 9, 0xFF, 0x80, 7, *b"ok"]:
        writer.add(token, THOUGHT)
    writer.close({"exit": "finished", "answer": "", "correct": None, "tokens": 22, "seconds": 0})
    assert main(["view", str(path)]) == 0
    browser.open("file://" + capsys.readouterr().out.strip(), ready=READY)
    assert browser.eval("document.querySelector('#rows .row').textContent") == "0BOShéllo ✓ 😀\\txffx80x07ok"
    assert browser.eval("[...document.querySelectorAll('#rows .c')].map(c => c.textContent)") == ["BOS", "\\t", "xff", "x80", "x07"]
    assert browser.eval("document.querySelector('.badge').textContent") == "not checked"


@pytest.mark.slow
def test_a_500k_token_hanoi_opens_in_seconds(browser, tmp_path, capsys):
    """The timing is measured by eval/bench_view.py; here only a generous bound."""
    task = get_task("hanoi")
    url, end = page(tmp_path, "hanoi12", task, task.problem({"disks": list(range(12, 0, -1))}), capsys)
    assert end["tokens"] > 500_000 and (tmp_path / "hanoi12.html").stat().st_size < 1_000_000
    assert browser.open(url, ready=READY) < 30
    assert browser.eval("document.querySelectorAll('#rows .row').length") <= 800 // 20 + 1
    browser.eval("document.getElementById('toend').click()")
    assert browser.eval("[...document.querySelectorAll('#rows .row')].pop().textContent").endswith("ANSEOS")
