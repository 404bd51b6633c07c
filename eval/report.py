"""Report of a sweep: Markdown tables (per size, and in the paper's n -> m (p%) notation beside
the paper's numbers) and one PNG per task of exact-match accuracy against problem size.

    mamba-agent report RESULTS.jsonl [--out-dir DIR]

Two metrics per row where the results have both: exact trajectory (the paper's) and correct
(the checker's verdict on a finished episode). n -> m (p%): trained on sizes up to n, exact
trajectory p at the largest evaluated size m with p >= 5% (the paper's notation, its Table 1).
Rows of different weights are never pooled: a label evaluated with several checkpoints (by
SHA-256) gets one row per checkpoint, marked `@sha`.
"""

from collections import defaultdict
from pathlib import Path

from mamba_agent.eval.sweep import load_results

# The paper's results (Malach et al., arXiv 2510.14826), in its notation, by task and policy kind.
PAPER = {
    "addition": {"mamba": "5 -> 1,000 (100%)", "lstm": "5 -> 1,000 (100%)", "gru": "5 -> 1,000 (~80%)",
                 "transformer": "fails beyond 5", "transformer-window": "fails"},
    "multiplication-1": {"mamba": "10 -> 1,000 (100%)", "lstm": "10 -> 500 (100%)", "gru": "10 -> 500 (100%)",
                         "transformer": "10 -> 20 (79%)", "transformer-window": "10 -> 13 (25%)"},
    "multiplication-2": {"mamba": "10 -> 1,000 (100%)", "lstm": "10 -> 100 (100%)", "gru": "10 -> 100 (100%)",
                         "transformer": "10 -> 14 (12%)", "transformer-window": "10 -> 20 (33%)"},
    "logical_graph": {"mamba": "10 -> 1,000 (98%)", "lstm": "10 -> 1,000 (100%)", "gru": "10 -> 1,000 (100%)",
                      "transformer": "10 -> 1,000 (5%)", "transformer-window": "10 -> 500 (9%)"},
    "hanoi": {"mamba": "8 -> 12 (49%)", "lstm": "8 -> 8", "gru": "8 -> 8", "transformer": "8 -> 8",
              "transformer-window": "8 -> 8"},
}


def labelled(results: list[dict]) -> list[dict]:
    """The rows, each label split by weights: `label @sha` where one label has several."""
    shas = defaultdict(set)
    for r in results:
        shas[(r["task"], r["label"])].add(r.get("checkpoint_sha256"))
    return [{**r, "label": f"{r['label']} @{(r.get('checkpoint_sha256') or 'unknown')[:8]}"}
            if len(shas[(r["task"], r["label"])]) > 1 else r for r in results]


def accuracy(results: list[dict], metric: str = "exact") -> dict[tuple[str, str, int], tuple[int, int]]:
    """(task, label, size) -> (hits, total) of `metric` ("exact" or "correct"); a cell where
    any row lacks the metric (`correct` of an episode cut at its divergence) is left out."""
    acc, missing = defaultdict(lambda: [0, 0]), set()
    for r in results:
        key = (r["task"], r["label"], r["size"])
        if r.get(metric) is None:
            missing.add(key)
        acc[key][0] += bool(r.get(metric))
        acc[key][1] += 1
    return {k: tuple(v) for k, v in acc.items() if k not in missing}


def _train_max(task: str) -> int | None:
    from mamba_agent.tasks import get_task

    try:
        return get_task(task).train_max_size
    except (ValueError, AttributeError):
        return None


def percent(hit: int, total: int) -> str:
    """hit/total as a whole percentage, except that only all is 100% and only none 0% (996 of
    1,000 is 99.6%, not 100%)."""
    p = 100 * hit / total
    return f"{p:.0f}%" if hit in (0, total) or 0.5 <= p < 99.5 else f"{p:.1f}%"


def paper_notation(train_max: int | None, by_size: dict[int, tuple[int, int]]) -> str:
    passing = [(n, hit, total) for n, (hit, total) in sorted(by_size.items()) if total and hit / total >= 0.05]
    if not passing:
        return f"{train_max or '?'} -> none (<5%)"
    m, hit, total = passing[-1]
    return f"{train_max or '?'} -> {m:,} ({percent(hit, total)})"


def report(results: list[dict], out_dir: str | Path | None = None) -> str:
    results = labelled(results)
    acc, correct = accuracy(results), accuracy(results, "correct")
    kinds = {(r["task"], r["label"]): r.get("policy", "?") + ("-window" if r.get("sliding_window") else "") for r in results}
    train_max = {(r["task"], r["label"]): r.get("train_max_size") or _train_max(r["task"]) for r in results}
    lines = []
    for task in sorted({t for t, _, _ in acc}):
        labels = list(dict.fromkeys(lab for t, lab, _ in acc if t == task))
        sizes = sorted({n for t, _, n in acc if t == task})
        lines += [f"### {task}", "", "| checkpoint | policy | metric | " + " | ".join(f"{n:,}" for n in sizes)
                  + " | ours | paper |", "|---" * (len(sizes) + 5) + "|"]
        for lab in labels:
            by_size = {n: acc[(task, lab, n)] for n in sizes if (task, lab, n) in acc}
            kind = kinds[(task, lab)]
            ours = paper_notation(train_max[(task, lab)], by_size)
            for metric, table in (("exact trajectory", acc), ("correct", correct)):
                cells = [f"{percent(*table[key])} ({table[key][1]})" if (key := (task, lab, n)) in table else "" for n in sizes]
                if any(cells) or metric == "exact trajectory":
                    tail = f" | {ours} | {PAPER.get(task, {}).get(kind, '')} |" if metric == "exact trajectory" else " | | |"
                    lines.append(f"| {lab} | {kind} | {metric} | " + " | ".join(cells) + tail)
        lines.append("")
        if out_dir is not None:
            _plot(task, labels, acc, train_max, Path(out_dir) / f"{task}.png")
    return "\n".join(lines)


def _plot(task: str, labels: list[str], acc: dict, train_max: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for lab in labels:
        pts = sorted((n, 100 * h / t) for (tk, lb, n), (h, t) in acc.items() if tk == task and lb == lab and t)
        ax.plot([n for n, _ in pts], [p for _, p in pts], marker="o", label=lab)
    trained = {train_max[(task, lab)] for lab in labels} - {None}
    for n in trained:
        ax.axvline(n, color="gray", linestyle="--", linewidth=1)
        ax.text(n, 50, " trained up to here", rotation=90, va="center", fontsize=7, color="gray")
    ax.set_xscale("log")
    sizes = sorted({n for (tk, _, n) in acc if tk == task})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])  # the sizes measured, not powers of ten
    ax.minorticks_off()
    ax.set_xlabel("problem size")
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(task)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(path: str, out_dir: str | None = None) -> str:
    return report(load_results(Path(path)), out_dir)
