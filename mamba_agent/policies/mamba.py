"""Mamba-1 (Gu & Dao, 2023) in pure PyTorch, with mamba-ssm's CUDA kernels when they import.

Parameter names and shapes are those of mamba-ssm's `MambaLMHeadModel` with a Mamba1 mixer,
`rms_norm=True`, `residual_in_fp32=True` and no MLP, so its state dicts load with strict=True.
Symbols follow the paper: Δ (delta) the step size, A, B, C, D the SSM parameters, h the SSM
state, N = d_state; shapes use B for batch, L for time, W = d_conv.

Kernels are chosen per call: only CUDA tensors use them, through one cached, guarded import
(`_kernels`); MAMBA_AGENT_NO_KERNELS=1 forces the PyTorch path (read once, at the first CUDA
call). Everywhere else the scan and the conv before it run fused on the CPU, or as chunked
PyTorch ops (mamba_scan.py). For bf16, keep the weights in fp32 and use autocast: A_log and D are used in fp32 (the
kernels require it) and the residual stream stays fp32.
"""

import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import PositiveInt, model_validator
from torch import Tensor, nn

from mamba_agent.policies.base import Policy, PolicyConfig
from mamba_agent.policies.mamba_scan import causal_conv_silu, fast_selective_scan

log = logging.getLogger(__name__)


class MambaConfig(PolicyConfig):
    """Sizes of a Mamba-1 language model; the defaults give 0.5M parameters at vocab_size 288."""

    kind: Literal["mamba"] = "mamba"
    """Policy kind."""
    d_model: PositiveInt = 128
    """Width of the residual stream."""
    n_layer: PositiveInt = 4
    """Number of Mamba blocks."""
    d_state: PositiveInt = 16
    """N in the paper: SSM state size per channel."""
    d_conv: PositiveInt = 4
    """W: width of the causal depthwise convolution (the CUDA kernels take 2 to 4)."""
    expand: PositiveInt = 2
    """d_inner = expand * d_model channels inside each block."""
    dt_rank: PositiveInt | None = None
    """Rank of the Δ projection; None means ceil(d_model / 16) (mamba-ssm's "auto"), filled in
    when the config is validated, so the saved config states the value used."""
    pad_vocab_size_multiple: PositiveInt = 8
    """The embedding has vocab_size rounded up to this multiple (as mamba-ssm); logits are cut
    back to vocab_size."""

    @model_validator(mode="after")
    def _fill_dt_rank(self) -> "MambaConfig":
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        return self

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m


@dataclass
class MambaState:
    """Per-layer recurrent state, in mamba-ssm's layouts; its size does not depend on the history."""

    conv: Tensor
    """(n_layer, B, d_inner, W): the last W inputs of each layer's convolution."""
    ssm: Tensor
    """(n_layer, B, d_inner, N): h of each layer's SSM, fp32."""


class _Kernels(NamedTuple):
    selective_scan_fn: Callable
    selective_state_update: Callable
    causal_conv1d_fn: Callable | None  # causal-conv1d is a separate package; torch's conv replaces it
    causal_conv1d_update: Callable | None


@functools.cache
def _kernels() -> _Kernels | None:
    """mamba-ssm's CUDA kernels, or None for the PyTorch path; imported on the first CUDA call."""
    if os.environ.get("MAMBA_AGENT_NO_KERNELS") == "1":
        log.info("MAMBA_AGENT_NO_KERNELS=1: Mamba uses its PyTorch path on CUDA")
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception as e:  # a build without kernels fails with more than ImportError
        log.warning("mamba-ssm kernels unavailable (%r); Mamba uses its PyTorch path on CUDA", e)
        return None
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    except Exception as e:
        log.info("causal-conv1d unavailable (%r); Mamba uses torch's conv1d", e)
        causal_conv1d_fn = causal_conv1d_update = None
    log.info("Mamba uses mamba-ssm kernels on CUDA (causal-conv1d: %s)", causal_conv1d_fn is not None)
    return _Kernels(selective_scan_fn, selective_state_update, causal_conv1d_fn, causal_conv1d_update)


class MambaMixer(nn.Module):
    """Mamba-1 mixer: in_proj -> causal conv -> selective SSM, gated by silu(z) -> out_proj."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        d_inner, N, R = config.d_inner, config.d_state, config.dt_rank
        self.dt_rank, self.d_state = R, N
        self.in_proj = nn.Linear(config.d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner)
        self.x_proj = nn.Linear(d_inner, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, d_inner)
        log_n = torch.log(torch.arange(1, N + 1, dtype=torch.float32))  # (N,)
        self.A_log = nn.Parameter(log_n.repeat(d_inner, 1))  # (d_inner, N): S4D-real, A = -(1..N)
        self.D = nn.Parameter(torch.ones(d_inner))  # (d_inner,)
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=False)

        # mamba-ssm's initialization: Δ = softplus(dt_proj(.)) starts log-uniform in [1e-3, 1e-1]
        # and out_proj is scaled by 1/sqrt(n_layer) so that the residual sum keeps its variance.
        nn.init.uniform_(self.dt_proj.weight, -(R**-0.5), R**-0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))  # (d_inner,)
        dt = dt.clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(Δ)
            self.out_proj.weight /= math.sqrt(config.n_layer)
        self._A, self._A_key = None, None

    def _decode_A(self) -> Tensor:
        """A = -exp(A_log) (d_inner, N) for step, recomputed only when A_log was written or moved."""
        key = (self.A_log._version, self.A_log.data_ptr())  # load_state_dict and optimizers bump _version
        if key != self._A_key:
            self._A, self._A_key = -torch.exp(self.A_log.detach().float()), key
        return self._A

    def _conv(self, x: Tensor, conv_state: Tensor | None) -> Tensor:
        """Causal depthwise conv, x (B, d_inner, L) -> (B, d_inner, L), before the activation.

        conv_state (B, d_inner, W) holds the last W inputs and is updated in place; None means
        an empty history.
        """
        W = self.conv1d.kernel_size[0]
        if conv_state is None:
            x = F.pad(x, (W - 1, 0))  # (B, d_inner, W-1+L)
        else:
            x = torch.cat([conv_state[..., 1:], x], dim=-1)  # (B, d_inner, W-1+L)
            conv_state.copy_(x[..., -W:].detach())
        return F.conv1d(x, self.conv1d.weight, self.conv1d.bias, groups=x.shape[1])

    def forward(
        self, hidden: Tensor, conv_state: Tensor | None = None, ssm_state: Tensor | None = None
    ) -> Tensor:
        """hidden (B, L, d_model) -> (B, L, d_model). With states (prefill): continue from them and
        update them in place."""
        kernels = _kernels() if hidden.is_cuda else None
        if not kernels:
            return self._forward_torch(hidden, conv_state, ssm_state)
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        if kernels.causal_conv1d_fn and conv_state is None:
            x = kernels.causal_conv1d_fn(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        else:  # with a state: one conv over [last W-1 inputs | x]
            x = F.silu(self._conv(x, conv_state))  # (B, d_inner, L)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, L, R|N|N)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); bias added in fp32 below
        B, C = B.transpose(1, 2), C.transpose(1, 2)  # (B, N, L)
        y = kernels.selective_scan_fn(
            x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            return_last_state=ssm_state is not None,
        )
        if ssm_state is not None:
            y, h = y
            y = y + self._from_initial_state(ssm_state, dt, A, C, z)
            ssm_state.add_(h.detach())
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)

    def _forward_torch(self, hidden: Tensor, conv_state: Tensor | None, ssm_state: Tensor | None) -> Tensor:
        """`forward` without mamba-ssm, time-major throughout: (B, L, channels), as the
        projections make and take them."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, L, d_inner) each
        x = self._conv_silu(x, conv_state)  # (B, L, d_inner)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, L, R|N|N)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, d_inner): Δ = softplus(dt + bias), in the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        y, h = fast_selective_scan(x, dt, self.dt_proj.bias, A, B, C, self.D, z, ssm_state)  # (B, L, d_inner)
        if ssm_state is not None:
            ssm_state.copy_(h.detach())
        return self.out_proj(y)  # (B, L, d_model)

    def _conv_silu(self, x: Tensor, conv_state: Tensor | None) -> Tensor:
        """silu(`_conv`) on x (B, L, d_inner) -> (B, L, d_inner), updating conv_state likewise."""
        W = self.conv1d.kernel_size[0]
        history = None if conv_state is None else conv_state[..., 1:].transpose(1, 2)  # (B, W-1, d_inner)
        out = causal_conv_silu(x, history, self.conv1d.weight[:, 0], self.conv1d.bias)
        if conv_state is not None:
            window = torch.cat([history.to(x.dtype), x[:, -W:]], dim=1)[:, -W:]  # (B, W, d_inner): the last W inputs
            conv_state.copy_(window.detach().transpose(1, 2))
        return out

    def _from_initial_state(self, h0: Tensor, dt: Tensor, A: Tensor, C: Tensor, z: Tensor) -> Tensor:
        """Prefill with the scan kernel, which starts from h = 0: add what h0 contributes.

        The recurrence is linear in h, so h0 adds exp(A cumsum(Δ)_t) h0 to h_t and C_t of that
        to y_t. Returns that gated output (B, d_inner, L) and decays h0 in place to its share of
        the final state (the caller adds the kernel's). The decay factors are made 128 MiB at a
        time.
        """
        delta = F.softplus(dt.float() + self.dt_proj.bias.float()[:, None])  # Δ (B, d_inner, L)
        elapsed = delta.cumsum(-1)  # (B, d_inner, L)
        h0, C = h0.float(), C.float()
        B, d_inner, L = delta.shape
        block = max(1, 2**25 // (B * d_inner * self.d_state))  # time steps per 128 MiB of decay
        y0 = torch.cat([
            torch.einsum("bdln,bdn,bnl->bdl", torch.exp(elapsed[..., t : t + block, None] * A[:, None]), h0, C[..., t : t + block])
            for t in range(0, L, block)
        ], dim=-1)  # (B, d_inner, L)
        h0.mul_(torch.exp(elapsed[..., -1:] * A))
        return y0 * F.silu(z.float())

    def step(self, hidden: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One token: hidden (B, d_model) -> (B, d_model); conv_state and ssm_state updated in place."""
        # F.linear rather than module calls, and a multiply-sum rather than conv1d (about 70 us on
        # one CPU thread at this size): at batch 1 the cost is per operation, not per flop.
        x, z = F.linear(hidden, self.in_proj.weight).chunk(2, dim=-1)  # (B, d_inner) each
        kernels = _kernels() if hidden.is_cuda else None
        if kernels and kernels.causal_conv1d_update:
            # The kernel wants x in the state's dtype; under autocast x is bf16, the state fp32.
            x = kernels.causal_conv1d_update(
                x.to(conv_state.dtype), conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, "silu"
            )
        else:
            window = torch.cat([conv_state[..., 1:], x[..., None]], dim=-1)  # (B, d_inner, W): last W inputs
            conv_state.copy_(window)
            x = torch.sum(window * self.conv1d.weight[:, 0], dim=-1) + self.conv1d.bias  # (B, d_inner)
            x = F.silu(x)
        x_dbl = F.linear(x, self.x_proj.weight)  # (B, R + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, R|N|N)
        A = self._decode_A()  # (d_inner, N)
        if kernels:
            dt = F.linear(dt, self.dt_proj.weight)  # (B, d_inner); the kernel adds the bias
            y = kernels.selective_state_update(
                ssm_state, x, dt, A, B, C, self.D, z=z, dt_bias=self.dt_proj.bias, dt_softplus=True
            )
            return F.linear(y, self.out_proj.weight)  # (B, d_model)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias))  # Δ (B, d_inner)
        # h = exp(Δ A) h + Δ B x, in place: (B, d_inner, N)
        ssm_state.mul_(torch.exp(delta[..., None] * A)).add_((delta * x)[..., None] * B[:, None])
        y = torch.addcmul((ssm_state @ C[..., None])[..., 0], self.D, x)  # C h + D x, (B, d_inner)
        return F.linear(y * F.silu(z), self.out_proj.weight)  # (B, d_model)


class MambaPolicy(Policy):
    """Mamba-1 language model (mamba-ssm's MambaLMHeadModel layout) behind the Policy interface."""

    config: MambaConfig
    static_state = True

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        d = config.d_model
        self.backbone = nn.ModuleDict(
            dict(
                embedding=nn.Embedding(config.padded_vocab_size, d),
                layers=nn.ModuleList(
                    nn.ModuleDict(dict(norm=nn.RMSNorm(d, eps=1e-5), mixer=MambaMixer(config)))
                    for _ in range(config.n_layer)
                ),
                norm_f=nn.RMSNorm(d, eps=1e-5),
            )
        )
        self.lm_head = nn.Linear(d, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight  # tied, as in mamba-ssm
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MambaState:
        c, weight = self.config, self.backbone.embedding.weight
        device = weight.device if device is None else device
        return MambaState(
            conv=torch.zeros(c.n_layer, batch_size, c.d_inner, c.d_conv, device=device, dtype=weight.dtype),
            ssm=torch.zeros(c.n_layer, batch_size, c.d_inner, c.d_state, device=device, dtype=torch.float32),
        )

    def _logits(self, residual: Tensor) -> Tensor:
        """residual (..., d_model) -> logits (..., vocab_size) float32; padded rows never scored."""
        hidden = self.backbone.norm_f(residual)
        return F.linear(hidden, self.lm_head.weight[: self.config.vocab_size]).float()

    def forward(self, tokens: Tensor, state: MambaState | None = None) -> Tensor:
        # mamba-ssm's add -> norm -> mixer order, with the residual stream kept in fp32.
        residual = self.backbone.embedding(tokens).float()  # (B, L, d_model)
        for i, layer in enumerate(self.backbone.layers):
            states = (None, None) if state is None else (state.conv[i], state.ssm[i])
            residual = residual + layer.mixer(layer.norm(residual), *states)
        return self._logits(residual)  # (B, L, vocab_size)

    @torch.no_grad()
    def step(self, token: Tensor, state: MambaState) -> Tensor:
        residual = self.backbone.embedding(token).float()  # (B, d_model)
        for layer, conv_state, ssm_state in zip(self.backbone.layers, state.conv, state.ssm):
            residual = residual + layer.mixer.step(layer.norm(residual), conv_state, ssm_state)
        return self._logits(residual)  # (B, vocab_size)

    def state_nbytes(self, state: MambaState) -> int:
        return state.conv.nbytes + state.ssm.nbytes

    def reset_row(self, state: MambaState, row: int) -> None:
        state.conv[:, row].zero_()
        state.ssm[:, row].zero_()
