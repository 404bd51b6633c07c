"""Gathers issue 4's multiplication and logical-graph results into one file per task, for
`mamba-agent report`. Run from the repository root:

    python3 eval/results/2026-11-29-issue4-summary/collect.py
    mamba-agent report eval/results/2026-11-29-issue4-summary/results.jsonl --out-dir eval/results/2026-11-29-issue4-summary

Labels are rewritten to name each model once (a model evaluated on the GPU and on the CPU carries
two run paths otherwise); CPU evaluations this session are in cpu/. A row from an interrupted run
beyond the samples asked for is left out (index >= SAMPLES[file]): the first N problems of a
size, never the N that finished first (early failures finish first).
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
R = HERE.parent
SOURCES = {  # file -> label for every row in it
    R / "2026-11-29-campaign-a/eval/multiplication-1-mamba.jsonl": "builtin:multiplication-1-mamba",
    R / "2026-11-29-campaign-c/eval/multiplication-2-mamba-more.jsonl": "builtin:multiplication-2-mamba",
    HERE / "cpu/mult-mamba-cpu.jsonl": None,  # already builtin:...
    R / "2026-11-29-multiplication-baselines-cpu/eval.jsonl": None,  # runs/multiplication-{1,2}-lstm
    R / "2026-11-29-multiplication-lookup-cpu/eval.jsonl": "lookup k=12, back-off",
    R / "2026-11-29-campaign-e/eval/multiplication-1-gru.jsonl": "multiplication-1-gru",
    HERE / "cpu/m1-gru-1000.jsonl": "multiplication-1-gru",
    R / "2026-11-29-campaign-e/eval/multiplication-2-gru.jsonl": "multiplication-2-gru",
    R / "2026-11-29-campaign-e/eval/multiplication-1-transformer.jsonl": "multiplication-1-transformer",
    R / "2026-11-29-campaign-e/eval/multiplication-2-transformer.jsonl": "multiplication-2-transformer",
    R / "2026-11-29-campaign-f/eval/multiplication-1-window.jsonl": "multiplication-1-window (W=64)",
    R / "2026-11-29-campaign-f/eval/multiplication-2-window.jsonl": "multiplication-2-window (W=64)",
    HERE / "cpu/m2-window-1000.jsonl": "multiplication-2-window (W=64)",
    R / "2026-11-29-campaign-e/eval/logical_graph-mamba-more2.jsonl": "builtin:logical_graph-mamba",
    R / "2026-11-29-campaign-f/eval/logical_graph-mamba-more2.jsonl": "builtin:logical_graph-mamba",
    R / "2026-11-29-campaign-f/eval/logical_graph-gru-more2.jsonl": "logical_graph-gru",
    HERE / "cpu/lg-gru-1000.jsonl": "logical_graph-gru",
    R / "2026-11-29-campaign-e/eval/logical_graph-lstm-more.jsonl": "logical_graph-lstm",
    R / "2026-11-29-campaign-d/eval/logical_graph-transformer.jsonl": "logical_graph-transformer",
    R / "2026-11-29-campaign-f/eval/logical_graph-window.jsonl": "logical_graph-window (W=64)",
    HERE / "cpu/lg-window.jsonl": "logical_graph-window (W=64)",
    R / "2026-11-28-logical-graph-lookup-cpu/logical-graph-lookup-eval.jsonl": "lookup k=30, back-off",
}
SAMPLES = {HERE / "cpu/m2-window-1000.jsonl": 20}  # an interrupted wider run left rows beyond these

with open(HERE / "results.jsonl", "w") as out:
    for path, label in SOURCES.items():
        for line in open(path):
            row = json.loads(line)
            if row["index"] >= SAMPLES.get(path, 10**9):
                continue
            row["label"] = label or row["label"]
            if "window" in row["label"]:  # rows written before eval recorded `sliding_window`
                row["sliding_window"] = 64
            out.write(json.dumps(row) + "\n")
