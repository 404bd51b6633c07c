"""Training on oracle tool-use trajectories: next-token prediction, loss only on model tokens.

Batches are generated on the fly from the task's training distribution; the batch of step s on
rank r comes from a generator seeded by (seed, r, s), so a resumed run sees exactly the data it
would have seen (with `length_buckets` G, the G batches of a block of steps are pooled, sorted by
length and cut again, so each step pads to lengths like its own). Trajectory files (`data`,
mamba_agent/data.py) fill all or part of each batch from a stream that depends on the seed
alone, so the same holds for them. Every `save_every` steps the run folder gets an atomic
checkpoint plus `train_state.pt` (optimizer, step); `train` on the same folder resumes from there.
Several GPUs: `torchrun --nproc_per_node N -m mamba_agent.cli train ...` (DDP; rank 0 writes).
"""

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from mamba_agent.checkpoint import load_checkpoint, save_checkpoint
from mamba_agent.console import Bar
from mamba_agent.data import TrajectoryFiles
from mamba_agent.policies import build_policy
from mamba_agent.policies.lookup import LookupConfig, fit_lookup
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import LEARNED_ROLES
from mamba_agent.vocab import PAD, VOCAB_SIZE


class TrainConfig(BaseModel, use_attribute_docstrings=True):
    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    """Task family whose oracle trajectories are the training data, and whose checkpoint this is;
    None: the task of the `data` files, or addition without them."""
    policy: dict = Field(default_factory=lambda: {"kind": "mamba"})
    """Policy config: `kind` plus any of that kind's fields (vocab_size is filled in)."""
    steps: int = 2000
    """Optimizer steps (the paper trains for 2,000)."""
    batch_size: int = 128
    """Trajectories per step, over all ranks."""
    lr: float = 3e-3
    """Peak learning rate (AdamW), after a linear warm-up, then cosine decay to lr/10."""
    warmup: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (not on norms, biases, A_log, D)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    seed: int = 0
    """Seeds the weights and the data stream."""
    save_every: int = 200
    """Steps between checkpoints (and the point a crash resumes from)."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    data_workers: int = 0
    """Processes generating oracle trajectories (0: the training process). The batches are the
    same whatever this is; on a GPU, generation is often slower than the step."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: the forward pass under autocast (weights, optimizer, loss and the Mamba state stay
    fp32); on a GPU it lets attention use its fast bf16 kernels."""
    max_seconds: float | None = None
    """A time budget: the cosine decay follows steps or seconds, whichever is further along, and
    the run ends (and saves) when either is used up. For fixed-time runs on a shared GPU; the
    number of steps done then depends on the machine (the log and the summary have it)."""
    length_buckets: int = Field(1, ge=1)
    """Steps taken G at a time: their G x batch_size trajectories are sorted by length and cut
    into G batches, taken in a random order. The same trajectories as with 1, only regrouped; a
    step then pads to the length of its own batch, not of the longest problem the task draws,
    which is what an RNN step (sequential in time) and attention (quadratic) cost. For tasks
    whose lengths vary widely: Hanoi's 1..8 disks run from ~70 to ~30,000 tokens."""
    data: list[str] = Field(default_factory=list)
    """Trajectory files, or folders (every *.jsonl under them), in the format the runtime writes:
    trained on instead of, or with, generated ones (mamba_agent/data.py)."""
    data_weight: float = Field(1.0, gt=0, le=1)
    """The share of each batch read from `data`: round(data_weight x the batch of a rank) rows, the
    rest generated from the task as without files."""
    init_from: str | None = None
    """A checkpoint (folder or builtin:<name>) of this task whose weights start the run (more
    training for a trained model; give another seed, or it sees its first batches again). Its
    policy config is used: `policy` may only repeat its kind."""


def step_trajectories(task, seed: int, rank: int, step: int, batch_size: int, files: TrajectoryFiles | None = None,
                      file_rows: int = 0, world: int = 1) -> list:
    """One rank's trajectories of `step`: batch_size - file_rows generated from the training
    distribution by a generator seeded by (seed, rank, step), then file_rows from the files'
    stream, at the positions of this step and rank."""
    rng = random.Random(f"{seed}-{rank}-{step}")
    trajs = [task.oracle(task.training_problem(rng)) for _ in range(batch_size - file_rows)]
    first = (step * world + rank) * file_rows
    return trajs + [files.at(first + j, seed) for j in range(file_rows)]


def file_rows(cfg: TrainConfig, world: int) -> int:
    """Rows of each rank's batch read from cfg.data (0 without)."""
    if not cfg.data:
        return 0
    batch = cfg.batch_size // world
    rows = round(cfg.data_weight * batch)
    if rows == 0 or (cfg.data_weight < 1 and rows == batch):
        raise ValueError(f"--data-weight {cfg.data_weight:g} of a batch of {batch} is {rows} rows: "
                         f"give a weight between {1 / batch:.2g} and {1 - 1 / batch:.2g}, or a larger batch")
    return rows


def make_batch(task, rng: random.Random, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, mask), each (B, T): mask is True where the target is a model token."""
    return pad_batch([task.oracle(task.training_problem(rng)) for _ in range(batch_size)])


def pad_batch(trajs: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trajectories -> (inputs, targets, mask), each (B, T), padded to the longest."""
    T = max(len(t) for t in trajs) - 1
    tokens = torch.full((len(trajs), T + 1), PAD, dtype=torch.long)
    mask = torch.zeros(len(trajs), T + 1, dtype=torch.bool)
    learned = torch.tensor([r in LEARNED_ROLES for r in range(5)])
    for i, t in enumerate(trajs):
        tokens[i, : len(t)] = torch.tensor(t.tokens)
        mask[i, : len(t)] = learned[torch.tensor(t.roles)]
    return tokens[:, :-1], tokens[:, 1:], mask[:, 1:]


class Batches(torch.utils.data.IterableDataset):
    """The batches of steps `start`..`stop`-1 for one rank of `world`, a block of `buckets` steps
    per item (see TrainConfig.length_buckets); worker w of W makes the blocks b with b % W == w,
    and the DataLoader takes the workers in turn, so the order is the step order. `file_rows` of
    each batch come from `files` (step_trajectories)."""

    def __init__(self, task_name: str, seed: int, rank: int, batch_size: int, start: int, stop: int, buckets: int = 1,
                 files: TrajectoryFiles | None = None, file_rows: int = 0, world: int = 1):
        self.task_name, self.seed, self.rank, self.batch_size = task_name, seed, rank, batch_size
        self.start, self.stop, self.buckets = start, stop, buckets
        self.files, self.file_rows, self.world = files, file_rows, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        task, G, B = get_task(self.task_name), self.buckets, self.batch_size
        for block in range(self.start // G + w, math.ceil(self.stop / G), n):
            steps = range(block * G, (block + 1) * G)  # whole blocks, whatever `stop`: the same data for any run length
            trajs = []
            for step in steps:
                trajs += step_trajectories(task, self.seed, self.rank, step, B, self.files, self.file_rows, self.world)
            if G > 1:
                trajs.sort(key=len)
                order = list(range(G))
                random.Random(f"{self.seed}-{self.rank}-block-{block}").shuffle(order)
                trajs = [t for i in order for t in trajs[i * B:(i + 1) * B]]
            yield [pad_batch(trajs[i * B:(i + 1) * B]) for i, step in enumerate(steps) if self.start <= step < self.stop]


def lr_at(step: int, cfg: TrainConfig, seconds: float = 0.0) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_seconds:
        progress = min(1.0, max(progress, seconds / cfg.max_seconds))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: TrainConfig, out: str | Path, progress: bool = True) -> dict:
    """Train (or resume) into folder `out`; returns the training summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if world > 1:
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over {world} ranks")
    files = TrajectoryFiles(cfg.data, cfg.task) if cfg.data else None
    cfg = cfg.model_copy(update={"task": files.task if files else cfg.task or "addition"})
    task, rows = get_task(cfg.task), file_rows(cfg, world)
    if cfg.policy.get("kind") == "lookup":
        return fit_lookup_run(cfg, out, task, progress, files, rows)
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        policy, meta = load_checkpoint(cfg.init_from)
        if meta["task"] != cfg.task or set(cfg.policy) - {"kind"} or cfg.policy.get("kind", policy.config.kind) != policy.config.kind:
            raise ValueError(f"init_from {cfg.init_from} is a {meta['policy']['kind']} of task {meta['task']}: "
                             f"train it with --task {meta['task']} --policy {meta['policy']['kind']} and no --set")
        policy = policy.train().to(device)
    else:
        policy = build_policy({**cfg.policy, "vocab_size": VOCAB_SIZE}).to(device)
    decay = [p for n, p in policy.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in policy.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    step, seconds, tokens_seen = 0, 0.0, 0
    state_path = out / "train_state.pt"
    if state_path.exists():  # resume
        saved = torch.load(state_path, map_location=device, weights_only=False)
        settings = TrainConfig.model_validate(saved["config"]).model_dump()  # fields added since: their defaults
        if {**settings, "steps": cfg.steps, "data_workers": cfg.data_workers} != cfg.model_dump():  # more steps may extend a run
            raise ValueError(f"{out} holds a run with other settings; choose a new --out or the same settings")
        if saved.get("data_fingerprint") != (files.fingerprint if files else None):
            raise ValueError(f"--data: the trajectory files changed since {out}'s run began; give the same files or a new --out")
        policy.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        step, seconds, tokens_seen = saved["step"], saved["seconds"], saved["tokens_seen"]
    model = torch.nn.parallel.DistributedDataParallel(policy) if world > 1 else policy
    log = open(out / "train_log.jsonl", "a") if rank == 0 else None
    bar = Bar("train", cfg.steps, step, loss=float("nan")) if progress and rank == 0 else None
    summary = json.loads((out / "config.json").read_text())["training"] if step else {}
    start, loss_ema = time.monotonic() - seconds, None
    batches = torch.utils.data.DataLoader(
        Batches(cfg.task, cfg.seed, rank, cfg.batch_size // world, step, cfg.steps, cfg.length_buckets, files, rows, world),
        batch_size=None, num_workers=cfg.data_workers, prefetch_factor=4 if cfg.data_workers else None,
    )
    for batch in (batch for block in batches for batch in block):
        inputs, targets, mask = (x.to(device, non_blocking=True) for x in batch)
        seconds = time.monotonic() - start
        if world > 1 and cfg.max_seconds is not None:  # rank 0's clock: the same lr and last step on every rank
            clock = torch.tensor(seconds, device=device, dtype=torch.float64)
            torch.distributed.broadcast(clock, 0)
            seconds = clock.item()
        lr = lr_at(step, cfg, seconds)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=cfg.precision == "bf16"):
            logits = model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits[mask].float(), targets[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens_seen += int(mask.sum()) * world
        loss_value = loss.item()
        loss_ema = loss_value if loss_ema is None else 0.95 * loss_ema + 0.05 * loss_value
        if bar:
            bar.update(step, loss=loss_ema)
        out_of_time = cfg.max_seconds is not None and seconds >= cfg.max_seconds  # as of this step's start
        last = step == cfg.steps or out_of_time
        if rank == 0 and (step % 10 == 0 or last):
            log.write(json.dumps({"step": step, "loss": loss_value, "lr": lr, "seconds": round(time.monotonic() - start, 2)}) + "\n")
            log.flush()
        if rank == 0 and (step % cfg.save_every == 0 or last):
            summary = {
                "task_sizes": data_summary(cfg, task, files),
                "steps": step,
                "loss": loss_value,
                "loss_ema": loss_ema,
                "model_tokens_seen": tokens_seen,
                "seconds": round(time.monotonic() - start, 1),
                "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
                "world_size": world,
                "parameters": policy.num_parameters(),
                "config": cfg.model_dump(),
            }
            save_checkpoint(policy, out, cfg.task, summary)
            torch.save(
                {"config": cfg.model_dump(), "model": policy.state_dict(), "optimizer": opt.state_dict(),
                 "step": step, "seconds": time.monotonic() - start, "tokens_seen": tokens_seen,
                 "data_fingerprint": files.fingerprint if files else None},
                out / "train_state.pt.tmp",
            )
            os.replace(out / "train_state.pt.tmp", state_path)
        if out_of_time:
            break
    if bar:
        bar.close()
    if log:
        log.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary



def data_summary(cfg: TrainConfig, task, files: TrajectoryFiles | None) -> str:
    generated = f"training distribution of {cfg.task} (sizes up to {task.train_max_size})"
    if files is None:
        return generated
    read = f"{len(files):,} trajectories of {cfg.task} in {len(files.paths):,} files ({', '.join(cfg.data)})"
    return read if cfg.data_weight == 1 else f"{read} for {cfg.data_weight:g} of each batch, the rest from the {generated}"


def fit_lookup_run(cfg: TrainConfig, out: Path, task, progress: bool, files: TrajectoryFiles | None, rows: int) -> dict:
    """The lookup-table policy (docs/locality.md) learns by counting: it sees exactly the trajectories a
    neural policy trained with the same settings would see (steps x batch_size, same seeds)."""
    start = time.monotonic()
    bar = Bar("count", cfg.steps) if progress else None

    def trajectories():
        for step in range(cfg.steps):
            yield from step_trajectories(task, cfg.seed, 0, step, cfg.batch_size, files, rows)
            if bar:
                bar.update(step + 1)

    lookup = LookupConfig.model_validate({**cfg.policy, "vocab_size": VOCAB_SIZE})
    policy = fit_lookup(trajectories(), lookup.k, VOCAB_SIZE, lookup.backoff)
    if bar:
        bar.close()
    summary = {
        "task_sizes": data_summary(cfg, task, files),
        "problems": cfg.steps * cfg.batch_size,
        "contexts": policy.config.table_size,
        "conflicts": policy.n_conflicts,
        "seconds": round(time.monotonic() - start, 1),
        "device": "cpu",
        "config": cfg.model_dump(),
    }
    save_checkpoint(policy, out, cfg.task, summary)
    return summary
