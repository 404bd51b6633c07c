"""How the model steps: the steppers, and the one place that picks one (`choose_step`).

A stepper holds B rows of a policy's state on a device and reads tokens into it, a token a row:
`greedy(feed)` returns the most likely next ids (B,), `logits(feed)` the scores; `prefill(tokens)`
reads a run of forced tokens a row at once; `reset_row(r)` empties one row for a new episode.
Inputs and outputs are tensors on the stepper's device. The registry:
  reference  the policy's own `step` and `forward`: every policy, on any device
  numpy      Mamba-1 and Mamba-2 on the CPU in NumPy, weights prepared once (policies/mamba_cpu.py)
  fused      Mamba on CUDA, 6 kernels a layer, mamba-ssm's state update (policies/mamba_cuda.py)
  split      Mamba on CUDA, 4 Triton kernels a layer (policies/mamba_split_kernel.py); its state
             in float32, bfloat16 or float8_e4m3fn; with `pairs`, a row reads a forced token in
             the same step as the token before it: `greedy(feed (2, B), n_feed (B,))`
Each gives the reference's ids (tests compare every one with it; a state in fewer bits than
fp32 is a choice the user makes, never the default). A stepper is `static` when its state is a
fixed set of tensors updated in place and a step never waits on the host: a CUDA graph may then
capture it (the runtime does, on CUDA).
"""

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from mamba_agent.policies.base import state_tensors

class ChoiceError(ValueError):
    """A row form or step that cannot run this policy, task or device (the message says why)."""


STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float8_e4m3fn": torch.float8_e4m3fn}


class Stepper:
    """The reference: the policy's `step` (a token a row) and `forward` (prefill into the state)."""

    name = "reference"
    pairs = False  # reads 2 tokens a row in one step (`greedy(feed (2, B), n_feed)`)

    def __init__(self, policy, batch_size: int, device: torch.device | str | None = None):
        self.policy, self.batch_size = policy, batch_size
        self.device = torch.device(device) if device is not None else _device_of(policy)
        self.state = self.init_state()
        self.static = getattr(policy, "static_state", False)
        self.can_reset_rows = _can_reset_rows(policy)

    prefill_row_tokens = 8192
    """Row-tokens per forward call of a prefill: a long prompt goes through in chunks that
    continue each other's state exactly, so memory stays bounded (activations grow with the
    row-tokens of a call; 30 prompts of 20,000 tokens at once took 24 GB and were killed)."""

    def init_state(self):
        return self.policy.init_state(self.batch_size, self.device)

    @torch.no_grad()
    def logits(self, feed: Tensor, n_feed: Tensor | None = None) -> Tensor:
        """feed (B,) ids -> logits (B, V); may be a buffer the next call overwrites."""
        return self.policy.step(feed, self.state)

    def greedy(self, feed: Tensor, n_feed: Tensor | None = None) -> Tensor:
        """feed (B,) ids -> the B most likely next ids."""
        return self.logits(feed, n_feed).argmax(-1)

    @torch.no_grad()
    def prefill(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> the logits after the last one (B, V)."""
        chunk = max(1, self.prefill_row_tokens // tokens.shape[0])
        for start in range(0, tokens.shape[1], chunk):
            logits = self.policy(tokens[:, start : start + chunk], self.state)
        return logits[:, -1]

    def reset_row(self, row: int) -> None:
        self.policy.reset_row(self.state, row)

    def state_dict(self) -> dict[str, Tensor]:
        """The rows' state as CPU tensors in the policy's own layout and dtype (an episode
        checkpoint: the same whatever stepper or device made it). Only fixed-size states."""
        tensors = state_tensors(self.state)
        if tensors is None:
            raise NotImplementedError(f"{type(self.policy).__name__}'s state grows with the history: "
                                      "episode checkpoints need a policy with a fixed-size state")
        like = state_tensors(self.policy.init_state(1, "cpu"))
        return {name: t.detach().to("cpu", like[name].dtype, copy=True).contiguous() for name, t in tensors.items()}

    def load_state_dict(self, saved: dict[str, Tensor]) -> None:
        """Copy a `state_dict` into this stepper's state, in place (a captured graph and views of
        the state keep working), into its own layout and dtype."""
        tensors = state_tensors(self.state)
        if tensors is None or tensors.keys() != saved.keys():
            raise ValueError(f"saved state holds {sorted(saved)}, this policy's holds {sorted(tensors or {})}")
        for name, t in tensors.items():
            if t.shape != saved[name].shape:
                raise ValueError(f"saved state {name} is {tuple(saved[name].shape)}, this policy's {tuple(t.shape)}")
            t.copy_(saved[name])

    def reset_rows(self, rows: Tensor) -> None:
        """Empty rows `rows` (a tensor of indices): in one operation a state tensor where static."""
        if not self.static:
            for r in rows.tolist():
                self.reset_row(r)
            return
        for field in dataclasses.fields(self.state):
            if isinstance(value := getattr(self.state, field.name), Tensor):
                value[:, rows] = 0  # (layers, B, ...): every static state's layout

    def reset(self) -> None:
        """Every row empty: in place where the state is static (a captured graph keeps it)."""
        if not self.static:
            self.state = self.init_state()
            return
        for field in dataclasses.fields(self.state):
            if isinstance(value := getattr(self.state, field.name), Tensor):
                value.zero_()


class FusedStepper(Stepper):
    """Mamba on CUDA: `FusedStep` (mamba_cuda.py) in place of `policy.step`; prefill as the reference."""

    name = "fused"

    def __init__(self, policy, batch_size: int, device=None):
        from mamba_agent.policies.mamba import _kernels
        from mamba_agent.policies.mamba_cuda import FusedStep  # Triton: CUDA only

        super().__init__(policy, batch_size, device)
        self.step = FusedStep(policy, _kernels().selective_state_update)

    def logits(self, feed: Tensor, n_feed: Tensor | None = None) -> Tensor:
        return self.step(feed, self.state)


class SplitStepper(Stepper):
    """Mamba on CUDA: `SplitStepKernel` (mamba_split_kernel.py), the greedy pick in its last
    kernel; its own state layout in `state_dtype`, so prefill steps token by token. With a
    float32 state the matmuls are fp32 (ieee), as the reference; otherwise bf16, the fastest."""

    name = "split"
    pairs = True

    def __init__(self, policy, batch_size: int, device=None, state_dtype: str = "float32"):
        from mamba_agent.policies.mamba_split_kernel import SplitStepKernel  # Triton

        self.state_dtype = STATE_DTYPES[state_dtype]
        weights = "float32" if self.state_dtype == torch.float32 else "bfloat16"
        self.kernel = SplitStepKernel(policy, weight_dtype=weights)
        super().__init__(policy, batch_size, device)
        self.ids = torch.zeros(batch_size, dtype=torch.int32, device=self.device)

    def init_state(self):
        return self.kernel.init_state(self.batch_size, self.device, self.state_dtype)

    def greedy(self, feed: Tensor, n_feed: Tensor | None = None) -> Tensor:
        if feed.dim() == 2:
            return self.kernel.greedy_pair(feed, n_feed, self.state, self.ids)
        return self.kernel.greedy(feed, self.state, self.ids)

    def logits(self, feed: Tensor, n_feed: Tensor | None = None) -> Tensor:
        if feed.dim() == 2:
            return self.kernel.step_pair(feed, n_feed, self.state)
        return self.kernel(feed, self.state)

    def prefill(self, tokens: Tensor) -> Tensor:
        for t in range(tokens.shape[1]):
            logits = self.logits(tokens[:, t].contiguous())
        return logits



def _numpy_stepper(policy, batch_size: int, device=None) -> Stepper:
    from mamba_agent.policies.mamba_cpu import Numpy2Stepper, NumpyStepper

    return (NumpyStepper if policy.config.kind == "mamba" else Numpy2Stepper)(policy, batch_size)


STEPPERS = {"reference": Stepper, "numpy": _numpy_stepper, "fused": FusedStepper, "split": SplitStepper}


def step_error(name: str, policy, device: torch.device | str, state_dtype: str = "float32") -> str | None:
    """Why stepper `name` cannot run `policy` on `device` (None: it can)."""
    device, kind = torch.device(device), getattr(getattr(policy, "config", None), "kind", None)
    if name not in STEPPERS:
        return f"unknown step {name!r}; valid steps: {', '.join(STEPPERS)}"
    if state_dtype not in STATE_DTYPES:
        return f"unknown state dtype {state_dtype!r}; valid: {', '.join(STATE_DTYPES)}"
    if state_dtype != "float32" and name != "split":
        return f"a {state_dtype} state is the split step's (--step split), not the {name} step's"
    if name == "reference":
        return None
    if kind not in ("mamba", "mamba2") or (kind == "mamba2" and name != "numpy"):
        runs = "Mamba and Mamba-2 policies" if name == "numpy" else "Mamba-1 policies (kind mamba)"
        return f"the {name} step runs {runs}; this one is a {kind}: use --step reference"
    fp32 = policy.backbone.embedding.weight.dtype == torch.float32
    if name == "numpy":
        return None if device.type == "cpu" and fp32 else "the numpy step runs fp32 Mamba weights on the CPU"
    if device.type != "cuda":
        return f"the {name} step runs on CUDA"
    if name == "fused":
        from mamba_agent.policies.mamba import _kernels

        if _kernels() is None or not fp32:
            return "the fused step needs mamba-ssm's kernels (pip install -e '.[cuda]') and fp32 weights"
        return None
    from mamba_agent.policies.mamba_split_kernel import split_error

    return split_error(policy.config)


def choose_step(policy, device: torch.device | str, tensor_rows: bool) -> str:
    """The fastest exact stepper for `policy` on `device`: on the CPU Mamba's NumPy step; on CUDA
    the split step where the tools are tensors too (one graph for many steps, forced tokens read
    in pairs), else the fused step; the reference where neither runs."""
    device = torch.device(device)
    order = ("split", "fused") if tensor_rows else ("fused", "split")
    for name in ("numpy",) if device.type == "cpu" else order:
        if step_error(name, policy, device) is None:
            return name
    return "reference"


def make_stepper(name: str, policy, batch_size: int, device=None, state_dtype: str = "float32") -> Stepper:
    """Stepper `name` (a key of STEPPERS) for `batch_size` rows. Raises ChoiceError when it cannot
    run this policy there."""
    device = torch.device(device) if device is not None else _device_of(policy)
    if why := step_error(name, policy, device, state_dtype):
        raise ChoiceError(why)
    if name == "split":
        return SplitStepper(policy, batch_size, device, state_dtype)
    return STEPPERS[name](policy, batch_size, device)


def graphed(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """`fn` captured in a CUDA graph; returns its replay. Warm-up runs first on a side stream
    (Triton compiles, cuBLAS picks its kernels): what fn writes is changed by them."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _device_of(module) -> torch.device:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)  # lookup tables have only buffers
    return tensor.device if tensor is not None else torch.device("cpu")


def _can_reset_rows(policy) -> bool:
    try:
        policy.reset_row(policy.init_state(1), 0)
    except (NotImplementedError, AttributeError):
        return False
    return True
