"""mamba-agent: solve a task file, train a policy, evaluate length generalisation.

Entry points only wire things together: parse -> config -> build -> run. A problem with the
user's input is one line on stderr naming the flag or field and the fix (with --json, also an
`{"error": ...}` object on stdout) and exit code 2. Ctrl-C exits 130 and SIGTERM 143, with the
trajectories closed and no traceback.
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 2, 130, 143


class UsageError(Exception):
    """The user's input cannot be used: the message is the one line they see."""


class Terminated(BaseException):
    """SIGTERM, raised wherever the program is (as Ctrl-C raises KeyboardInterrupt)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        raise UsageError(message)


def _whole(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(above: float | None = None, at_least: float | None = None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be above {above:g}, got {text}")
        if at_least is not None and not value >= at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least:g}, got {text}")
        return value

    return parse


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, e.g. 5,10,100, got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got {min(sizes)}")
    return sizes


def _device(text: str) -> str:
    from mamba_agent.taskfile import device_name

    try:
        return device_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mamba-agent")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except None and False (the help text says what no value means)."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from mamba_agent.tasks import TASKS

    tasks = ", ".join(sorted(TASKS)) + ", an installed plugin's name, or module:Name"
    parser = _Parser(prog="mamba-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mamba-agent {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_DefaultsShown)

    p = command("solve", "solve one task file with a policy and check the answer")
    p.add_argument("taskfile", help="YAML task file (see tasks/examples/)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")
    p.add_argument("--checkpoint", help="override policy.checkpoint (a folder or builtin:<name>)")
    p.add_argument("--device", type=_device, help="override policy.device (cpu, cuda, cuda:N)")
    p.add_argument("--trajectory", help="override where the trajectory JSONL is written")
    p.add_argument("--episode-dir", help="where the episode is saved to resume it (default: the trajectory's path, .episode)")
    p.add_argument("--checkpoint-every", type=_number(at_least=0), default=10.0, metavar="MINUTES",
                   help="save the episode this often (0: only at the time limit, SIGINT and SIGTERM)")
    _runtime_flags(p)

    p = command("resume", "go on with an episode that solve saved (interrupted, or at its time limit)")
    p.add_argument("directory", help="the episode folder (solve's --episode-dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (need not be where it was saved)")
    p.add_argument("--max-seconds", type=_number(above=0), help="time for this run (default: the task file's limit)")
    p.add_argument("--checkpoint-every", type=_number(at_least=0), default=10.0, metavar="MINUTES",
                   help="save the episode this often (0: only at the time limit, SIGINT and SIGTERM)")
    _runtime_flags(p)

    p = command("train", "train a policy on oracle trajectories or trajectory files (resumes an interrupted --out)")
    p.add_argument("--task", help=f"one of: {tasks} (default: the --data files' task, or addition)")
    p.add_argument("--policy", default="mamba", help="policy kind: mamba, mamba2, transformer, lstm, gru, lookup (counts, needs --set k=N), an installed plugin's name, or module:Name")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a policy config field, e.g. --set d_model=128 (repeatable)")
    p.add_argument("--steps", type=_whole(1), default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=_whole(1), default=128, help="trajectories a step, over all ranks")
    p.add_argument("--lr", type=_number(at_least=0), default=3e-3, help="peak learning rate (AdamW; warm-up, then cosine to lr/10)")
    p.add_argument("--seed", type=_whole(0), default=0, help="seeds the weights and the data stream")
    p.add_argument("--save-every", type=_whole(1), default=200, help="steps between checkpoints (where a rerun resumes)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-workers", type=_whole(0), default=0, help="processes generating trajectories (same batches)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast the forward pass")
    p.add_argument("--max-seconds", type=_number(above=0), help="time budget: the lr decays by steps or time, whichever is further, and the run ends at either")
    p.add_argument("--init-from", help="start from this checkpoint's weights (folder or builtin:<name>)")
    p.add_argument("--length-buckets", type=_whole(1), default=1, metavar="G",
                   help="sort each G steps' trajectories by length and batch alike ones (same data; less padding)")
    p.add_argument("--data", action="append", default=[], metavar="PATH",
                   help="train on trajectory files in the format the runtime writes: a .jsonl file or a folder of them (repeatable)")
    p.add_argument("--data-weight", type=_number(above=0), default=1.0, metavar="W",
                   help="share of each batch read from --data (at most 1); the rest is generated from --task")
    p.add_argument("--out", required=True, help="run folder: checkpoint, train_state.pt, train_log.jsonl")

    p = command("eval", "accuracy against problem size: exact trajectory and the checker's verdict (appends, resumes)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders or builtin:<name>")
    p.add_argument("--sizes", type=_sizes, default="5,10,20,100,1000", help="comma-separated problem sizes")
    p.add_argument("--samples", type=_whole(1), default=100, help="problems per size")
    p.add_argument("--batch-size", type=_whole(1), default=100, help="episodes decoded together")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--stop-at-divergence", action="store_true",
                   help="end each episode at its first token off the oracle: exact trajectory only, no checker verdict (cheaper for failing policies)")
    p.add_argument("--out", default="eval-results.jsonl", help="results JSONL (appended)")
    _runtime_flags(p)
    p.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "float8_e4m3fn"],
                   help="the split step's state: fewer bits are faster and not exact (float32: the policy's)")
    p.add_argument("--trajectories", metavar="DIR", help="write each problem's trajectory JSONL into DIR")
    p.add_argument("--trajectory-sample", type=_whole(1), metavar="K",
                   help="with --trajectories: only the first K problems of each size")

    p = command("report", "tables (paper notation) and plots from eval results")
    p.add_argument("results", help="results JSONL written by `mamba-agent eval` (or .jsonl.gz)")
    p.add_argument("--out-dir", help="write <task>.png plots and report.md here")

    p = command("locality", "smallest k for which a task's oracle trajectories are k-local")
    p.add_argument("--task", default="addition", help=f"one of: {tasks}")
    p.add_argument("--sizes", type=_sizes, help="comma-separated problem sizes (default: 1 to two beyond the training sizes)")
    p.add_argument("--per-size", type=_whole(1), default=50, help="trajectories per size")

    p = command("view", "write a trajectory as one self-contained HTML page to read in a browser")
    p.add_argument("trajectory", help="trajectory JSONL (what solve writes)")
    p.add_argument("--out", help="HTML file to write; none: the trajectory's path with .html")

    p = command("replay", "replay a trajectory's model tokens through fresh tools; check every observation and the verdict")
    p.add_argument("trajectory", help="trajectory JSONL (what solve writes)")
    return parser


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", default="auto", choices=["auto", "python", "tensor"],
                   help="where the tools run: python (any task), tensor (pointer and search memory, on the "
                        "model's device); auto: tensor on CUDA where the task has them")
    p.add_argument("--step", default="auto", choices=["auto", "reference", "numpy", "fused", "split"],
                   help="how the model steps; auto: the fastest exact one for the policy and device")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = "mamba-agent" + (f" {argv[0]}" if argv and not argv[0].startswith("-") else "")
    as_json = "--json" in argv

    def terminated(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        args = build_parser().parse_args(argv)
        commands = {"solve": solve, "resume": resume, "train": train, "eval": evaluate, "report": report, "locality": locality,
                    "view": view, "replay": replay}
        return commands[args.command](args)
    except UsageError as e:
        message = str(e).splitlines()[0] if str(e) else "bad input"
        print(f"{name}: error: {message}", file=sys.stderr)
        if as_json:
            print(json.dumps({"error": message, "exit": EXIT_USAGE}))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        return EXIT_SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def solve(args) -> int:
    from mamba_agent.checkpoint import DEFAULT_CHECKPOINTS
    from mamba_agent.runtime import Sampler
    from mamba_agent.taskfile import TaskFileError, load_taskfile
    from mamba_agent.tasks import get_task
    from mamba_agent.trajectory import TrajectoryWriter

    try:
        tf, problem = load_taskfile(args.taskfile)
    except TaskFileError as e:
        raise UsageError(str(e)) from None
    checkpoint = args.checkpoint or tf.policy.checkpoint or DEFAULT_CHECKPOINTS.get(tf.task)
    if checkpoint is None:
        raise UsageError(f"no checkpoint is shipped for task {tf.task!r}; give policy.checkpoint in the task file")
    policy, meta = _load_policy(checkpoint, args.device or tf.policy.device, tf.task)
    task = get_task(tf.task)
    path = args.trajectory or tf.trajectory
    episode_dir = args.episode_dir or str(Path(path).with_suffix(".episode"))
    try:
        writer = TrajectoryWriter(path, {"task": tf.task, "input": problem.input, "policy": meta["policy"]["kind"],
                                         **_provenance(checkpoint, meta)})
    except OSError as e:
        raise UsageError(f"trajectory: cannot write {path} ({e.strerror or e}); give a writable file path (--trajectory)") from None
    max_tokens = tf.limits.max_tokens or task.max_tokens(problem)

    def make_episode(on_tool_call):
        # The time limit is kept by _drive, between two steps, where the episode can be saved.
        episode = task.episode(problem, max_tokens=max_tokens, limits=_no_clock(tf.limits), writer=writer,
                               on_tool_call=on_tool_call)
        return episode, None

    sampler = Sampler(tf.policy.temperature, tf.policy.seed)
    return _drive(args, task, problem, checkpoint, meta, policy, sampler, tf.limits, max_tokens, make_episode, episode_dir)


def resume(args) -> int:
    from mamba_agent.episode import Limits
    from mamba_agent.runtime import Sampler
    from mamba_agent.saved_episode import EpisodeCheckpointError, load, restore
    from mamba_agent.tasks import get_task

    try:
        record = load(args.directory)
        task = get_task(record["task"])
        problem = task.problem(record["input"])
    except (EpisodeCheckpointError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    checkpoint = record["checkpoint"]
    policy, meta = _load_policy(checkpoint, args.device, task.name)
    if meta["checkpoint_sha256"] != record["checkpoint_sha256"]:
        raise UsageError(f"checkpoint {checkpoint}: its weights changed since the episode was saved "
                         f"(sha256 {meta['checkpoint_sha256'][:12]}, saved with {record['checkpoint_sha256'][:12]})")
    limits = Limits(**record["limits"])
    if args.max_seconds:
        limits = limits.model_copy(update={"max_seconds": args.max_seconds})

    def make_episode(on_tool_call):
        episode = task.episode(problem, max_tokens=record["max_tokens"], limits=_no_clock(limits), on_tool_call=on_tool_call)
        try:
            saved_loop, _ = restore(record, task, episode)
        except EpisodeCheckpointError as e:
            raise UsageError(str(e)) from None
        return episode, saved_loop

    sampler = Sampler(record["temperature"])
    return _drive(args, task, problem, checkpoint, meta, policy, sampler, limits, record["max_tokens"], make_episode,
                  args.directory)


def _load_policy(checkpoint: str, device: str, task: str):
    import torch

    from mamba_agent.checkpoint import CheckpointError, load_checkpoint

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"policy.device is {device!r} but CUDA is not available here; use cpu")
    try:
        policy, meta = load_checkpoint(checkpoint, device=device)
    except (CheckpointError, OSError) as e:
        raise UsageError(f"checkpoint: {e}") from None
    if meta["task"] != task:
        raise UsageError(f"checkpoint {checkpoint} was trained on {meta['task']!r}, the task file asks for {task!r}")
    torch.set_num_threads(1)  # one token at a time: threads cost more than they give at this size
    return policy, meta


def _provenance(checkpoint: str, meta: dict) -> dict:
    from mamba_agent.provenance import commit

    return {"checkpoint": checkpoint, "checkpoint_sha256": meta["checkpoint_sha256"],
            "task_version": meta["task_version"], "commit": commit()}


def _no_clock(limits):
    return limits.model_copy(update={"max_seconds": float("inf")})


def _drive(args, task, problem, checkpoint, meta, policy, sampler, limits, max_tokens, make_episode, episode_dir) -> int:
    """Run one episode (new, or restored) to its end, saving it to `episode_dir` every
    --checkpoint-every minutes, at the time limit and on SIGINT or SIGTERM (then exit 130 / 143;
    a second signal stops at once); print and return what solve does."""
    from contextlib import nullcontext

    from mamba_agent.episode import INTERRUPTED, TIME_LIMIT
    from mamba_agent.policies.base import state_tensors
    from mamba_agent.runtime import run_episodes
    from mamba_agent.saved_episode import FILE, EpisodeRun
    from mamba_agent.steppers import ChoiceError

    can_save = state_tensors(policy.init_state(1)) is not None  # a fixed-size state
    every = 60 * args.checkpoint_every if args.checkpoint_every else None
    stop, clock = [], {"start": time.monotonic(), "saved": time.monotonic(), "any": False}

    def on_signal(signum, frame):
        if stop:  # asked twice: now
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        stop.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    view = nullcontext() if args.json else _LiveView(task.name, checkpoint, max_tokens)
    try:
        with view:
            episode, saved_loop = make_episode(None if args.json else view.tool_call)
            run = EpisodeRun(task, problem, checkpoint, meta, episode, sampler, limits, max_tokens)

            def progress(loop) -> bool:
                if not args.json:
                    view.update(episode)
                now = time.monotonic()
                out_of_time = now - clock["start"] > limits.max_seconds
                due = every is not None and now - clock["saved"] > every
                if (stop or out_of_time or due) and can_save and not episode.done:
                    run.save(episode_dir, loop)
                    clock["saved"], clock["any"] = now, True
                return bool(stop) or out_of_time

            try:
                run_episodes(policy, [episode], sampler, on_progress=progress, resume=saved_loop,
                             rows=args.rows, step=args.step)
            except ChoiceError as e:  # before any step: the trajectory ends with exit error
                raise UsageError(f"--rows/--step: {e}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    saved = Path(episode_dir) / FILE
    if not episode.done:
        if stop:
            episode.abort(INTERRUPTED)
            where = f"saved: mamba-agent resume {episode_dir}" if clock["any"] else f"the trajectory so far is in {episode.writer.path}"
            print(f"\ninterrupted; {where}", file=sys.stderr)
            raise KeyboardInterrupt if stop[0] == signal.SIGINT else Terminated()
        episode.exit = TIME_LIMIT
    elif episode.exit != TIME_LIMIT and saved.exists():
        saved.unlink()  # ended: nothing left to resume
    correct = task.check(problem, episode.answer, episode.tools)
    end = episode.close(correct)
    result = {"task": task.name, **end, "reference": problem.reference, **_provenance(checkpoint, meta),
              "trajectory": str(episode.writer.path)}
    if saved.exists():
        result["resume"] = f"mamba-agent resume {episode_dir}"
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

        seconds = max(time.monotonic() - self.started, 1e-9)
        if ep.n_fed < len(ep.prompt):  # still reading the question
            status = f"reading the question: {ep.n_fed:,} of {len(ep.prompt):,} tokens · {ep.n_fed / seconds:,.0f} tok/s"
        else:
            phase = "answering" if ep.after_ans else "thinking"
            answer = ep.answer
            shown = answer if len(answer) <= 60 else "…" + answer[-59:]
            status = f"{ep.n_tokens:,} tokens · {ep.n_tokens / seconds:,.0f} tok/s · {phase} · answer: {shown}"
        self.live.update(Text(f"{self.header} · {status}"))


def _print_result(r: dict) -> None:
    from mamba_agent.console import stderr

    verdict = "[green]correct[/]" if r["correct"] else "[red]wrong[/]"
    print(r["answer"])
    stderr.print(f"{verdict} · exit {r['exit']} · {r['tokens']:,} tokens · {r['seconds']:.2f} s · trajectory {r['trajectory']}")


def train(args) -> int:
    from mamba_agent.data import DataError
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
    if args.data_weight > 1:
        raise UsageError(f"--data-weight: the share of each batch read from --data, at most 1, got {args.data_weight:g}")
    try:
        if args.device != "auto":
            from mamba_agent.taskfile import device_name

            device_name(args.device)
        cfg = TrainConfig(task=args.task, policy=policy, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, save_every=args.save_every, device=args.device,
                          data_workers=args.data_workers, max_seconds=args.max_seconds, precision=args.precision,
                          init_from=args.init_from, length_buckets=args.length_buckets, data=args.data,
                          data_weight=args.data_weight)
        from mamba_agent.policies import policy_classes
        from mamba_agent.tasks import get_task
        from mamba_agent.vocab import VOCAB_SIZE

        if cfg.task is not None:
            _flag("--task", get_task, cfg.task)
        if args.data_weight < 1 and not args.data:
            raise ValueError("--data-weight: give the trajectory files too (--data PATH)")
        _, config_class = _flag("--policy", policy_classes, args.policy)
        if not args.init_from:
            config_class.model_validate({**policy, "vocab_size": VOCAB_SIZE})  # before any work
    except (ValidationError, ValueError) as e:
        raise UsageError(first_error(e) if isinstance(e, ValidationError) else str(e).splitlines()[0]) from None
    try:
        summary = run_training(cfg, args.out)
    except DataError as e:
        raise UsageError(f"--data: {e}") from None
    except ValueError as e:  # settings that clash with --out's run or --init-from's checkpoint
        raise UsageError(str(e).splitlines()[0]) from None
    if summary:  # rank 0 (torchrun's other ranks write nothing)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


def _flag(flag: str, lookup, name: str):
    """lookup(name), its ValueError (an unknown name, a broken plugin) a UsageError naming `flag`."""
    try:
        return lookup(name)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def evaluate(args) -> int:
    import torch

    from mamba_agent.checkpoint import CheckpointError
    from mamba_agent.eval.report import report as make_report
    from mamba_agent.eval.sweep import evaluate as run_eval
    from mamba_agent.steppers import ChoiceError

    if args.out.endswith(".gz"):
        raise UsageError(f"--out {args.out}: results are appended to plain JSONL; gunzip it and give the .jsonl")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here; use cpu")
    if args.trajectory_sample and not args.trajectories:
        raise UsageError("--trajectory-sample: give --trajectories DIR too")
    torch.set_num_threads(1)  # as solve: one token a row at a time, threads cost more than they give
    results = []
    for ckpt in args.checkpoints:
        try:
            results += run_eval(ckpt, args.sizes, args.samples, args.out, args.batch_size, args.device,
                                stop_at_divergence=args.stop_at_divergence, rows=args.rows, step=args.step,
                                state_dtype=args.state_dtype, trajectories=args.trajectories,
                                trajectory_sample=args.trajectory_sample)
        except CheckpointError as e:
            raise UsageError(f"{ckpt}: {e}") from None
        except ChoiceError as e:
            raise UsageError(f"--rows/--step/--state-dtype: {e}") from None
        except ValueError as e:  # a size the checkpoint's task does not take
            raise UsageError(f"--sizes: {e}") from None
        except OSError as e:
            raise UsageError(f"--out {args.out}: cannot write it ({e.strerror or e})") from None
    if results:  # rank 0 (torchrun's other ranks leave the report to it)
        print(make_report([r for r in results if r["size"] in args.sizes]))
    return 0


def report(args) -> int:
    from pathlib import Path

    from mamba_agent.eval.report import main as make_report

    if not Path(args.results).is_file():
        raise UsageError(f"{args.results}: no such results file")
    if args.out_dir:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--out-dir: plots need matplotlib: pip install 'mamba-agent[plots]'") from None
    try:
        text = make_report(args.results, args.out_dir)
        if args.out_dir:
            (Path(args.out_dir) / "report.md").write_text(text)
    except (KeyError, ValueError) as e:
        raise UsageError(f"{args.results}: not results of `mamba-agent eval` ({e.__class__.__name__}: {e})") from None
    except OSError as e:
        raise UsageError(f"--out-dir {args.out_dir}: cannot write there ({e.strerror or e})") from None
    print(text)
    return 0


def locality(args) -> int:
    import random

    from mamba_agent.locality import smallest_local_k
    from mamba_agent.tasks import get_task

    task = _flag("--task", get_task, args.task)
    rng = random.Random(0)
    sizes = args.sizes or list(range(1, task.train_max_size + 3))
    try:
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
