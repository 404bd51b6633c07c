"""Checkpoints: a folder with `model.safetensors` (weights) and `config.json` (what built them).

config.json: {"format": "mamba-agent-checkpoint", "version": 2, "vocab_version": 1,
              "task": "addition", "task_version": 1, "policy": {...PolicyConfig...},
              "training": {...summary...}}
`task_version` is the version of the task's trajectory the weights were trained on (each task
bumps its own whenever its trajectory changes); a checkpoint of another version, format or
vocabulary is refused. Checkpoints shipped in the package are named `builtin:<name>` (a folder
under mamba_agent/checkpoints/); anything else is a path.
"""

import copy
import json
import os
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError
from pydantic import ValidationError

from mamba_agent.policies import Policy, build_policy, policy_classes
from mamba_agent.provenance import file_sha256
from mamba_agent.tasks import get_task
from mamba_agent.vocab import VOCAB_VERSION

FORMAT, VERSION = "mamba-agent-checkpoint", 2  # 2: task_version
BUILTIN_DIR = Path(__file__).parent / "checkpoints"
DEFAULT_CHECKPOINTS = {  # what `solve` uses per task
    "addition": "builtin:addition-mamba",
    "multiplication-1": "builtin:multiplication-1-mamba",
    "multiplication-2": "builtin:multiplication-2-mamba",
    "hanoi": "builtin:hanoi-mamba",
    "logical_graph": "builtin:logical_graph-mamba",
    "code_debug": "builtin:code_debug-mamba",
}


class CheckpointError(Exception):
    """A checkpoint that is missing, malformed, or for another vocabulary."""


def resolve(name: str) -> Path:
    if name.startswith("builtin:"):
        path = BUILTIN_DIR / name.removeprefix("builtin:")
        if not path.is_dir():
            shipped = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
            raise CheckpointError(f"no built-in checkpoint {name!r}; shipped: {', '.join(shipped) or 'none'}")
        return path
    return Path(name)


def save_checkpoint(policy: Policy, directory: str | Path, task: str, training: dict) -> None:
    """Write weights and config atomically (a crash never leaves a half-written checkpoint)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "vocab_version": VOCAB_VERSION,
        "task": task,
        "task_version": get_task(task).version,
        "policy": policy.config.model_dump(),
        "training": training,
    }
    # Saved from a CPU copy: on CUDA, cuDNN packs an RNN's weights into one buffer (views of it),
    # which safetensors refuses to save.
    safetensors.torch.save_model(copy.deepcopy(policy).cpu(), directory / "model.safetensors.tmp")
    (directory / "config.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(directory / "model.safetensors.tmp", directory / "model.safetensors")
    os.replace(directory / "config.json.tmp", directory / "config.json")


def load_checkpoint(name: str | Path, device: str = "cpu") -> tuple[Policy, dict]:
    """(policy in eval mode, config.json contents plus `checkpoint_sha256`, the SHA-256 of the
    weights file) from a checkpoint folder or `builtin:<name>`. Raises CheckpointError, whose
    message names the file and what is wrong with it."""
    path = resolve(str(name))
    config_path, weights_path = path / "config.json", path / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it needs config.json and model.safetensors")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: not readable JSON ({e.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: not a mamba-agent checkpoint config")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{config_path}: checkpoint format {meta.get('version')}, this mamba-agent reads "
                              f"format {VERSION} (which records the task's trajectory version); retrain it")
    if meta.get("vocab_version") != VOCAB_VERSION:
        raise CheckpointError(f"{path}: vocabulary version {meta.get('vocab_version')}, this package speaks {VOCAB_VERSION}")
    try:
        task = get_task(meta.get("task"))
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    if meta.get("task_version") != task.version:
        raise CheckpointError(f"{path}: trained on version {meta.get('task_version')} of the {task.name} trajectory, "
                              f"this mamba-agent's {task.name} is version {task.version}; retrain it on this version")
    try:  # a plugin's policy kind that is not installed here: say so (not "cannot load the weights")
        policy_classes(meta["policy"].get("kind") if isinstance(meta.get("policy"), dict) else None)
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    try:
        policy = build_policy(meta["policy"])
        safetensors.torch.load_model(policy, weights_path, device=device)
    except (KeyError, TypeError, ValueError, ValidationError, RuntimeError, OSError, SafetensorError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{weights_path}: cannot load the weights ({why})") from None
    meta["checkpoint_sha256"] = file_sha256(weights_path)
    return policy.to(device).eval(), meta
