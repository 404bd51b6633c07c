"""mamba-agent: solve a task file, train a policy, evaluate length generalisation.

Entry points only wire things together: parse -> config -> build -> run. Any problem with the
user's input is one line on stderr and exit code 2.
"""

import argparse
import json
import sys
import time

from pydantic import ValidationError

EXIT_USAGE = 2


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mamba-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("solve", help="solve one task file with a policy and check the answer")
    p.add_argument("taskfile", help="YAML task file (see tasks/examples/)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")
    p.add_argument("--checkpoint", help="override policy.checkpoint (a folder or builtin:<name>)")
    p.add_argument("--device", help="override policy.device (cpu, cuda)")
    p.add_argument("--trajectory", help="override where the trajectory JSONL is written")

    p = sub.add_parser("train", help="train a policy on oracle trajectories (resumes an interrupted --out)")
    p.add_argument("--task", default="addition")
    p.add_argument("--policy", default="mamba", help="policy kind: mamba, transformer, lstm, gru, lookup (counts, needs --set k=N)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a policy config field, e.g. --set d_model=128 (repeatable)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--data-workers", type=int, default=0, help="processes generating trajectories (same batches)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast the forward pass")
    p.add_argument("--max-seconds", type=float, help="time budget: the lr decays by steps or time, whichever is further, and the run ends at either")
    p.add_argument("--init-from", help="start from this checkpoint's weights (folder or builtin:<name>)")
    p.add_argument("--length-buckets", type=int, default=1, metavar="G",
                   help="sort each G steps' trajectories by length and batch alike ones (same data; less padding)")
    p.add_argument("--out", required=True, help="run folder: checkpoint, train_state.pt, train_log.jsonl")

    p = sub.add_parser("eval", help="exact-match accuracy against problem size (appends, resumes)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders or builtin:<name>")
    p.add_argument("--sizes", default="5,10,20,100,1000", help="comma-separated problem sizes")
    p.add_argument("--samples", type=int, default=100, help="problems per size")
    p.add_argument("--batch-size", type=int, default=100, help="episodes decoded together")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="eval/results/results.jsonl", help="results JSONL (appended)")

    p = sub.add_parser("report", help="tables (paper notation) and plots from eval results")
    p.add_argument("results", help="results JSONL written by `mamba-agent eval`")
    p.add_argument("--out-dir", help="write <task>.png plots and report.md here")

    p = sub.add_parser("locality", help="smallest k for which a task's oracle trajectories are k-local")
    p.add_argument("--task", default="addition")
    p.add_argument("--sizes", help="comma-separated problem sizes (default: 1 to two beyond the training sizes)")
    p.add_argument("--per-size", type=int, default=50, help="trajectories per size")

    p = sub.add_parser("view", help="write a trajectory as one self-contained HTML page to read in a browser")
    p.add_argument("trajectory", help="trajectory JSONL (what solve writes)")
    p.add_argument("--out", help="HTML file to write (default: the trajectory's path with .html)")

    p = sub.add_parser("replay", help="replay a trajectory's model tokens through fresh tools; check every observation and the verdict")
    p.add_argument("trajectory", help="trajectory JSONL (what solve writes)")

    args = parser.parse_args(argv)
    try:
        return {"solve": solve, "train": train, "eval": evaluate, "report": report, "locality": locality,
                "view": view, "replay": replay}[args.command](args)
    except UsageError as e:
        print(f"mamba-agent {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def solve(args) -> int:
    import torch

    from mamba_agent.checkpoint import DEFAULT_CHECKPOINTS, CheckpointError, load_checkpoint
    from mamba_agent.runtime import Sampler, run_episodes
    from mamba_agent.taskfile import TaskFileError, load_taskfile
    from mamba_agent.tasks import get_task
    from mamba_agent.trajectory import TrajectoryWriter

    try:
        tf, problem = load_taskfile(args.taskfile)
    except TaskFileError as e:
        raise UsageError(str(e)) from None
    checkpoint = args.checkpoint or tf.policy.checkpoint or DEFAULT_CHECKPOINTS.get(tf.task)
    device = args.device or tf.policy.device
    if checkpoint is None:
        raise UsageError(f"no checkpoint is shipped for task {tf.task!r}; give policy.checkpoint in the task file")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"policy.device is {device!r} but CUDA is not available here; use cpu")
    try:
        policy, meta = load_checkpoint(checkpoint, device=device)
    except (CheckpointError, OSError) as e:
        raise UsageError(f"checkpoint: {e}") from None
    if meta["task"] != tf.task:
        raise UsageError(f"checkpoint {checkpoint} was trained on {meta['task']!r}, the task file asks for {tf.task!r}")
    task = get_task(tf.task)
    torch.set_num_threads(1)  # one token at a time: threads cost more than they give at this size
    path = args.trajectory or tf.trajectory
    writer = TrajectoryWriter(path, {"task": tf.task, "input": problem.input, "checkpoint": checkpoint, "policy": meta["policy"]["kind"]})
    max_tokens = tf.limits.max_tokens or task.max_tokens(problem)
    sampler = Sampler(tf.policy.temperature, tf.policy.seed)
    if args.json:
        episode = task.episode(problem, max_tokens=max_tokens, limits=tf.limits, writer=writer)
        run_episodes(policy, [episode], sampler)
    else:
        with _LiveView(tf.task, checkpoint, max_tokens) as view:
            episode = task.episode(problem, max_tokens=max_tokens, limits=tf.limits, writer=writer,
                                   on_tool_call=view.tool_call)
            run_episodes(policy, [episode], sampler, on_progress=lambda: view.update(episode))
    correct = task.check(problem, episode.answer, episode.tools)
    end = episode.close(correct)
    result = {"task": tf.task, **end, "reference": problem.reference, "checkpoint": checkpoint, "trajectory": str(path)}
    if args.json:
        print(json.dumps(result))
    else:
        _print_result(result)
    return 0 if correct else 1


class _LiveView:
    """One live status line on stderr: tokens, speed, phase, and the answer as it is written."""

    def __init__(self, task: str, checkpoint: str, max_tokens: int):
        from rich.live import Live

        from mamba_agent.console import stderr

        self.header, self.max_tokens = f"{task} · {checkpoint}", max_tokens
        self.live = Live(console=stderr, refresh_per_second=8, transient=False)
        self.started = time.monotonic()

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        if not self.live.console.is_terminal:  # rich leaves the last status line open there
            self.live.console.line()

    def tool_call(self, command: list[int], observation: list[int]) -> None:
        """One line per tool call with an argument (view, edit, run, find), printed as it happens."""
        from rich.markup import escape

        from mamba_agent.vocab import decode

        def short(text: str, limit: int) -> str:
            text = " ⏎ ".join(line for line in text.splitlines() if line.strip())
            return text if len(text) <= limit else text[: limit - 1] + "…"

        cmd, obs = short(decode(command), 60), short(decode(observation, specials=False), 70)
        self.live.console.print(f"[bold]{escape(cmd)}[/] → {escape(obs)}", soft_wrap=True)

    def update(self, ep) -> None:
        from rich.text import Text

        rate = ep.n_tokens / max(time.monotonic() - self.started, 1e-9)
        phase = "answering" if ep.after_ans else "thinking"
        answer = ep.answer
        shown = answer if len(answer) <= 60 else "…" + answer[-59:]
        self.live.update(Text(f"{self.header} · {ep.n_tokens:,} tokens · {rate:,.0f} tok/s · {phase} · answer: {shown}"))


def _print_result(r: dict) -> None:
    from mamba_agent.console import stderr

    verdict = "[green]correct[/]" if r["correct"] else "[red]wrong[/]"
    print(r["answer"])
    stderr.print(f"{verdict} · exit {r['exit']} · {r['tokens']:,} tokens · {r['seconds']:.2f} s · trajectory {r['trajectory']}")


def train(args) -> int:
    from mamba_agent.taskfile import first_error
    from mamba_agent.train import TrainConfig, train as run_training

    policy = {"kind": args.policy}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            policy[key] = json.loads(value)
        except json.JSONDecodeError:
            policy[key] = value
    try:
        cfg = TrainConfig(task=args.task, policy=policy, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, save_every=args.save_every, device=args.device,
                          data_workers=args.data_workers, max_seconds=args.max_seconds, precision=args.precision,
                          init_from=args.init_from, length_buckets=args.length_buckets)
        from mamba_agent.policies import POLICY_CONFIGS
        from mamba_agent.tasks import get_task
        from mamba_agent.vocab import VOCAB_SIZE

        get_task(cfg.task)
        if args.policy not in POLICY_CONFIGS:
            raise ValueError(f"unknown policy kind {args.policy!r}; valid kinds: {', '.join(POLICY_CONFIGS)}")
        if not args.init_from:
            POLICY_CONFIGS[args.policy].model_validate({**policy, "vocab_size": VOCAB_SIZE})  # before any work
    except (ValidationError, ValueError) as e:
        raise UsageError(first_error(e) if isinstance(e, ValidationError) else str(e).splitlines()[0]) from None
    try:
        summary = run_training(cfg, args.out)
    except ValueError as e:  # settings that clash with --out's run or --init-from's checkpoint
        raise UsageError(str(e).splitlines()[0]) from None
    if summary:  # rank 0 (torchrun's other ranks write nothing)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


def evaluate(args) -> int:
    from mamba_agent.checkpoint import CheckpointError
    from mamba_agent.eval.report import report as make_report
    from mamba_agent.eval.sweep import evaluate as run_eval

    sizes = [int(s) for s in args.sizes.split(",")]
    if args.out.endswith(".gz"):
        raise UsageError(f"--out {args.out}: results are appended to plain JSONL; gunzip it and give the .jsonl")
    results = []
    for ckpt in args.checkpoints:
        try:
            results += run_eval(ckpt, sizes, args.samples, args.out, args.batch_size, args.device)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    print(make_report([r for r in results if r["size"] in sizes]))
    return 0


def report(args) -> int:
    from pathlib import Path

    from mamba_agent.eval.report import main as make_report

    if not Path(args.results).is_file():
        raise UsageError(f"{args.results}: no such results file")
    text = make_report(args.results, args.out_dir)
    if args.out_dir:
        (Path(args.out_dir) / "report.md").write_text(text)
    print(text)
    return 0


def locality(args) -> int:
    import random

    from mamba_agent.locality import smallest_local_k
    from mamba_agent.tasks import get_task

    try:
        task = get_task(args.task)
    except ValueError as e:
        raise UsageError(str(e)) from None
    rng = random.Random(0)
    try:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(range(1, task.train_max_size + 3))
        trajs = [task.oracle(task.random_problem(rng, n)) for n in sizes for _ in range(args.per_size)]
    except ValueError as e:  # pydantic's ValidationError is one
        why = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise UsageError(f"--sizes: {why}; give sizes this task accepts") from None
    trajs += [task.oracle(task.training_problem(rng)) for _ in range(args.per_size * 10)]
    k = smallest_local_k(trajs)
    print(json.dumps({"task": task.name, "sizes": sizes, "trajectories": len(trajs), "k": k}))
    return 0


def view(args) -> int:
    from pathlib import Path

    from mamba_agent.trajectory import TrajectoryError
    from mamba_agent.view import write_view

    out = Path(args.out or Path(args.trajectory).with_suffix(".html"))
    if out.resolve() == Path(args.trajectory).resolve():
        raise UsageError(f"--out {out}: that is the trajectory itself; give another file")
    try:
        print(write_view(args.trajectory, out))
    except TrajectoryError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"--out {out}: {e.strerror}; give a file path in a writable folder") from None
    return 0


def replay(args) -> int:
    from mamba_agent.replay import replay as run_replay
    from mamba_agent.trajectory import TrajectoryError

    try:
        same, message = run_replay(args.trajectory)
    except TrajectoryError as e:
        raise UsageError(str(e)) from None
    print(message, file=sys.stdout if same else sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
