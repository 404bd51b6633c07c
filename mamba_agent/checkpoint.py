"""Checkpoints: a folder with `model.safetensors` (weights) and `config.json` (what built them).

config.json: {"format": "mamba-agent-checkpoint", "version": 1, "vocab_version": 1,
              "task": "addition", "policy": {...PolicyConfig...}, "training": {...summary...}}
Checkpoints shipped in the package are named `builtin:<name>` (a folder under
mamba_agent/checkpoints/); anything else is a path.
"""

import copy
import json
import os
from pathlib import Path

import safetensors.torch

from mamba_agent.policies import Policy, build_policy
from mamba_agent.vocab import VOCAB_VERSION

FORMAT, VERSION = "mamba-agent-checkpoint", 1
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
    """(policy in eval mode, config.json contents) from a checkpoint folder or `builtin:<name>`."""
    path = resolve(str(name))
    config_path, weights_path = path / "config.json", path / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it needs config.json and model.safetensors")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: not a mamba-agent checkpoint config")
    if meta.get("vocab_version") != VOCAB_VERSION:
        raise CheckpointError(f"{path}: vocabulary version {meta.get('vocab_version')}, this package speaks {VOCAB_VERSION}")
    policy = build_policy(meta["policy"])
    safetensors.torch.load_model(policy, weights_path, device=device)
    return policy.to(device).eval(), meta
