"""Gathers issue 4's multiplication, logical-graph and Hanoi results into one file, for
`mamba-agent report`. Run from the repository root:

    python3 eval/results/2026-11-29-issue4-summary/collect.py
    mamba-agent report eval/results/2026-11-29-issue4-summary/results.jsonl.gz --out-dir eval/results/2026-11-29-issue4-summary

Labels are rewritten to name each model once (a model evaluated on the GPU and on the CPU carries
two run paths otherwise); CPU evaluations are in cpu/. A row from an interrupted run
beyond the samples asked for is left out (index >= SAMPLES[file]): the first N problems of a
size, never the N that finished first (early failures finish first). A problem evaluated twice
for one label (the same model on the GPU and the CPU: the problems are the same by index) is
counted once, from the first file that has it.
"""

import gzip
import io
import json
from pathlib import Path

from mamba_agent.eval.sweep import load_results

HERE = Path(__file__).parent
R = HERE.parent
SOURCES = {  # file -> label for every row in it
    R / "2026-11-29-campaign-a/eval/multiplication-1-mamba.jsonl.gz": "builtin:multiplication-1-mamba",
    R / "2026-11-29-campaign-c/eval/multiplication-2-mamba-more.jsonl.gz": "builtin:multiplication-2-mamba",
    HERE / "cpu/mult-mamba-cpu.jsonl.gz": None,  # already builtin:...
    R / "2026-11-29-multiplication-baselines-cpu/eval.jsonl.gz": None,  # runs/multiplication-{1,2}-lstm
    R / "2026-11-29-multiplication-lookup-cpu/eval.jsonl.gz": "lookup k=12, back-off",
    R / "2026-11-29-campaign-e/eval/multiplication-1-gru.jsonl.gz": "multiplication-1-gru",
    HERE / "cpu/m1-gru-1000.jsonl": "multiplication-1-gru",
    R / "2026-11-29-campaign-e/eval/multiplication-2-gru.jsonl.gz": "multiplication-2-gru",
    R / "2026-11-29-campaign-e/eval/multiplication-1-transformer.jsonl.gz": "multiplication-1-transformer",
    R / "2026-11-29-campaign-e/eval/multiplication-2-transformer.jsonl.gz": "multiplication-2-transformer",
    R / "2026-11-29-campaign-f/eval/multiplication-1-window.jsonl.gz": "multiplication-1-window (W=64)",
    R / "2026-11-29-campaign-f/eval/multiplication-2-window.jsonl.gz": "multiplication-2-window (W=64)",
    HERE / "cpu/m2-window-1000.jsonl": "multiplication-2-window (W=64)",
    R / "2026-11-29-campaign-e/eval/logical_graph-mamba-more2.jsonl.gz": "builtin:logical_graph-mamba",
    R / "2026-11-29-campaign-f/eval/logical_graph-mamba-more2.jsonl": "builtin:logical_graph-mamba",
    R / "2026-11-29-campaign-f/eval/logical_graph-gru-more2.jsonl.gz": "logical_graph-gru",
    HERE / "cpu/lg-gru-1000.jsonl": "logical_graph-gru",
    R / "2026-11-29-campaign-e/eval/logical_graph-lstm-more.jsonl.gz": "logical_graph-lstm",
    R / "2026-11-29-campaign-d/eval/logical_graph-transformer.jsonl.gz": "logical_graph-transformer",
    R / "2026-11-29-campaign-f/eval/logical_graph-window.jsonl.gz": "logical_graph-window (W=64)",
    HERE / "cpu/lg-window.jsonl": "logical_graph-window (W=64)",
    R / "2026-11-28-logical-graph-lookup-cpu/logical-graph-lookup-eval.jsonl": "lookup k=30, back-off",
    # campaigns G and H (2026-11-29): the n x 2 RNNs trained further
    R / "2026-11-29-campaign-h/eval/multiplication-2-gru-more2.jsonl.gz": "multiplication-2-gru (E, G, H)",
    R / "2026-11-29-campaign-h/eval/multiplication-2-lstm-more.jsonl.gz": "multiplication-2-lstm (G, H)",
    HERE / "cpu/m2-lstm-1000.jsonl": "multiplication-2-lstm (G, H)",
    # Hanoi: Mamba (2026-11-28), the baselines (campaigns A, C, G, H, I and the CPU), lookup tables
    R / "2026-11-28-hanoi-h200/hanoi-eval.jsonl": None,  # runs/hanoi-mamba-s0 (shipped), -s1
    R / "2026-11-29-campaign-h/eval/hanoi-lstm-more.jsonl": "hanoi-lstm (G, H)",
    R / "2026-11-29-campaign-i/eval/hanoi-lstm-more.jsonl": "hanoi-lstm (G, H)",
    HERE / "cpu/hanoi-12-lstm.jsonl": "hanoi-lstm (G, H)",
    R / "2026-11-29-campaign-h/eval/hanoi-gru-more.jsonl": "hanoi-gru (G, H)",
    R / "2026-11-29-campaign-i/eval/hanoi-gru-more.jsonl": "hanoi-gru (G, H)",
    HERE / "cpu/hanoi-12-gru.jsonl": "hanoi-gru (G, H)",
    R / "2026-11-29-campaign-g/eval/hanoi-transformer-more.jsonl": "hanoi-transformer (C, G)",
    HERE / "cpu/hanoi-transformer-small.jsonl": "hanoi-transformer (C, G)",
    R / "2026-11-29-campaign-h/eval/hanoi-window-more.jsonl": "hanoi-window (W=64) (G, H)",
    R / "2026-11-29-campaign-i/eval/hanoi-window-more.jsonl": "hanoi-window (W=64) (G, H)",
    HERE / "cpu/hanoi-12-window.jsonl": "hanoi-window (W=64) (G, H)",
    R / "2026-11-28-hanoi-lookup-cpu/hanoi-lookup-eval.jsonl": None,
    # the no-CoT ablation of addition, trained further (campaigns G, H)
    HERE / "cpu/nocot-more2-5.jsonl.gz": "addition-nocot-mamba (A, B, C)",
    R / "2026-11-29-campaign-g/eval/addition-nocot-mamba-more3.jsonl.gz": "addition-nocot-mamba (A, B, C, G)",
    R / "2026-11-29-campaign-h/eval/addition-nocot-mamba-more4.jsonl.gz": "addition-nocot-mamba (A, B, C, G, H)",
    HERE / "cpu/nocot-more4.jsonl.gz": "addition-nocot-mamba (A, B, C, G, H)",
}
RENAME = {"runs/hanoi-mamba-s0": "builtin:hanoi-mamba (seed 0)", "runs/hanoi-mamba-s1": "hanoi-mamba (seed 1)",
          **{f"/tmp/hanoi-lookup/lookup-{k}": f"lookup {k}" for k in ("k5-strict", "k5-backoff", "k4-backoff")}}
SAMPLES = {HERE / "cpu/m2-window-1000.jsonl": 20}  # an interrupted wider run left rows beyond these

missing = [str(path) for path in SOURCES if not path.exists()]
if missing:  # load_results reads a missing file as empty: a renamed source would drop its rows silently
    raise SystemExit(f"missing: {', '.join(missing)}")
seen = set()  # (label, task, size, index): a problem evaluated twice (GPU and CPU, or a resumed run) counts once
with io.TextIOWrapper(gzip.GzipFile(HERE / "results.jsonl.gz", "wb", mtime=0)) as out:  # mtime 0: the same bytes each run
    for path, label in SOURCES.items():
        for row in load_results(path):
            row["label"] = label or RENAME.get(row["label"], row["label"])
            key = (row["label"], row["task"], row["size"], row["index"])
            if row["index"] >= SAMPLES.get(path, 10**9) or key in seen:
                continue
            seen.add(key)
            if "window" in row["label"]:  # rows written before eval recorded `sliding_window`
                row["sliding_window"] = 64
            out.write(json.dumps(row) + "\n")
