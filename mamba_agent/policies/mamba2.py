"""Mamba-2 (Dao & Gu, 2024: the SSD layer) in pure PyTorch, with mamba-ssm's kernels when they import.

Parameter names and shapes are those of mamba-ssm's `MambaLMHeadModel` with a Mamba2 mixer,
`rms_norm=True`, `residual_in_fp32=True` and no MLP, so its state dicts load with strict=True.
The SSD layer is Mamba-1's selective SSM with a scalar A per head: with H heads of P = headdim
channels, a per-head step size Δ and B, C shared by the heads of a group,
    h_t = exp(Δ_t A) h_t-1 + Δ_t x_t B_t^T  (P, N per head),   y_t = h_t C_t + D x_t,
then y gated by silu(z), RMS-normed per group (norm_before_gate=False) and projected out.

`forward` runs it chunked (`ssd_chunked`): within a chunk of Q tokens as matmuls (the
"attention" form, C_t . B_s weighted by the decay between s and t), across chunks a short
recurrence over the chunk-end states. `step` runs the recurrence itself. On CUDA, mamba-ssm's
`mamba_chunk_scan_combined` and `selective_state_update` replace them (one cached, guarded
import; MAMBA_AGENT_NO_KERNELS=1 forces the PyTorch path). The conv is Mamba-1's.
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
from mamba_agent.policies.mamba_scan import causal_conv_silu

log = logging.getLogger(__name__)


class Mamba2Config(PolicyConfig):
    """Sizes of a Mamba-2 language model; the defaults give 0.5M parameters at vocab_size 280,
    about the shipped Mamba-1's."""

    kind: Literal["mamba2"] = "mamba2"
    """Policy kind."""
    d_model: PositiveInt = 128
    """Width of the residual stream."""
    n_layer: PositiveInt = 4
    """Number of Mamba-2 blocks."""
    d_state: PositiveInt = 64
    """N: SSM state size per channel (mamba-ssm's default is 128, for larger models)."""
    d_conv: PositiveInt = 4
    """W: width of the causal depthwise convolution over x, B and C (the CUDA kernels take 2 to 4)."""
    expand: PositiveInt = 2
    """d_inner = expand * d_model channels inside each block."""
    headdim: PositiveInt = 32
    """P: channels per head; nheads = d_inner / headdim, each with its own A and Δ."""
    ngroups: PositiveInt = 1
    """Groups of heads that share B and C (and the gated norm's statistics)."""
    chunk_size: PositiveInt = 64
    """Q: tokens per chunk of the chunked scan (only speed and rounding depend on it)."""
    pad_vocab_size_multiple: PositiveInt = 8
    """The embedding has vocab_size rounded up to this multiple (as mamba-ssm); logits are cut
    back to vocab_size."""

    @model_validator(mode="after")
    def _check_heads(self) -> "Mamba2Config":
        if self.d_inner % self.headdim:
            raise ValueError(f"headdim {self.headdim} must divide d_inner = expand * d_model = {self.d_inner}")
        if self.nheads % self.ngroups:
            raise ValueError(f"ngroups {self.ngroups} must divide nheads = {self.nheads}")
        return self

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the conv: x, B and C."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m


@dataclass
class Mamba2State:
    """Per-layer recurrent state, in mamba-ssm's layouts; its size does not depend on the history."""

    conv: Tensor
    """(n_layer, B, conv_dim, W): the last W inputs of each layer's convolution."""
    ssm: Tensor
    """(n_layer, B, nheads, headdim, N): h of each layer's heads, fp32."""


def _segment_sums(a: Tensor) -> Tensor:
    """a (..., Q) -> (..., Q, Q): [t, s] = a[s+1] + ... + a[t] for s <= t, -inf above the
    diagonal. Summed segment by segment, not as a difference of cumulative sums, which loses
    the small differences of two large sums."""
    Q = a.shape[-1]
    below = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)
    sums = a[..., None].expand(*a.shape, Q).masked_fill(~below, 0).cumsum(-2)  # [t, s]: a[s+1..t]
    return sums.masked_fill(~below.logical_or(torch.eye(Q, dtype=torch.bool, device=a.device)), -math.inf)


def ssd_chunked(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int,
                h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The SSD recurrence over a sequence, chunk by chunk; D and the gate are the caller's.

    x (b, L, H, P), Δ (b, L, H) (after softplus), A (H,), B and C (b, L, G, N), h0 (b, H, P, N)
    or None (zeros) -> y (b, L, H, P) and the final state (b, H, P, N), fp32.
    """
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    R, Q = H // G, min(chunk, L)
    pad = -L % Q  # Δ = 0 at the padding: no decay, no input, the final state unchanged
    x, delta, B, C = (F.pad(t.float(), (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, delta, B, C))
    c = (L + pad) // Q
    x = x.view(b, c, Q, G, R, P)
    B, C = B.view(b, c, Q, G, N), C.view(b, c, Q, G, N)
    delta = delta.view(b, c, Q, G, R)
    a = (delta * A.float().view(G, R)).permute(0, 3, 4, 1, 2)  # Δ A (b, G, R, c, Q)
    a_cum = a.cumsum(-1)  # (b, G, R, c, Q): log decay from the chunk's start
    x_delta = x * delta[..., None]  # Δ x (b, c, Q, G, R, P)

    # Within a chunk: y_t = sum_{s <= t} (C_t . B_s) exp(a_{s+1} + ... + a_t) Δ_s x_s.
    scores = torch.einsum("bclgn,bcsgn->bgcls", C, B)[:, :, None] * torch.exp(_segment_sums(a))  # (b, G, R, c, Q, Q)
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", scores, x_delta)

    # Each chunk's contribution to the state at its end, then the recurrence across chunks.
    to_end = torch.exp(a_cum[..., -1:] - a_cum).permute(0, 3, 4, 1, 2)  # (b, c, Q, G, R)
    chunk_states = torch.einsum("bcsgrp,bcsgn->bcgrpn", x_delta * to_end[..., None], B)  # (b, c, G, R, P, N)
    chunk_decay = torch.exp(a_cum[..., -1]).permute(0, 3, 1, 2)[..., None, None]  # (b, c, G, R, 1, 1)
    h = x.new_zeros(b, G, R, P, N) if h0 is None else h0.float().reshape(b, G, R, P, N)
    starts = []  # the state entering each chunk
    for k in range(c):
        starts.append(h)
        h = h * chunk_decay[:, k] + chunk_states[:, k]
    starts = torch.stack(starts, dim=1)  # (b, c, G, R, P, N)

    # From the state entering the chunk: y_t += exp(a_1 + ... + a_t) h_start C_t.
    from_start = torch.exp(a_cum).permute(0, 3, 4, 1, 2)  # (b, c, Q, G, R)
    y = y + torch.einsum("bcgrpn,bclgn->bclgrp", starts, C) * from_start[..., None]
    return y.reshape(b, c * Q, H, P)[:, :L], h.reshape(b, H, P, N)


class _Kernels(NamedTuple):
    mamba_chunk_scan_combined: Callable
    selective_state_update: Callable
    causal_conv1d_fn: Callable | None  # causal-conv1d is a separate package; the torch conv replaces it
    causal_conv1d_update: Callable | None


@functools.cache
def _kernels() -> _Kernels | None:
    """mamba-ssm's CUDA kernels, or None for the PyTorch path; imported on the first CUDA call."""
    if os.environ.get("MAMBA_AGENT_NO_KERNELS") == "1":
        log.info("MAMBA_AGENT_NO_KERNELS=1: Mamba-2 uses its PyTorch path on CUDA")
        return None
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # a build without kernels fails with more than ImportError
        log.warning("mamba-ssm kernels unavailable (%r); Mamba-2 uses its PyTorch path on CUDA", e)
        return None
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    except Exception as e:
        log.info("causal-conv1d unavailable (%r); Mamba-2 uses the torch conv", e)
        causal_conv1d_fn = causal_conv1d_update = None
    log.info("Mamba-2 uses mamba-ssm kernels on CUDA (causal-conv1d: %s)", causal_conv1d_fn is not None)
    return _Kernels(mamba_chunk_scan_combined, selective_state_update, causal_conv1d_fn, causal_conv1d_update)


class GatedRMSNorm(nn.Module):
    """mamba-ssm's RMSNorm with a gate, norm_before_gate=False: rmsnorm(y silu(z)) per group."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        gated = (y.float() * F.silu(z.float())).unflatten(-1, (-1, self.group_size))  # (..., G, d / G)
        normed = gated * torch.rsqrt(gated.square().mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight).to(y.dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer: in_proj -> [z | x B C | Δ]; causal conv over x B C -> SSD, gated norm with
    z -> out_proj."""

    def __init__(self, config: Mamba2Config):
        super().__init__()
        c = config
        self.d_inner, self.d_state, self.ngroups, self.headdim = c.d_inner, c.d_state, c.ngroups, c.headdim
        self.nheads, self.chunk_size = c.nheads, c.chunk_size
        self.in_proj = nn.Linear(c.d_model, c.d_inner + c.conv_dim + c.nheads, bias=False)
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim)
        # mamba-ssm's initialization: Δ = softplus(dt_bias) log-uniform in [1e-3, 1e-1], A
        # uniform in [1, 16], D = 1; out_proj scaled by 1/sqrt(n_layer) (one residual a layer).
        dt = torch.exp(torch.rand(c.nheads) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(Δ), (H,)
        self.A_log = nn.Parameter(torch.log(torch.empty(c.nheads).uniform_(1, 16)))  # (H,)
        self.D = nn.Parameter(torch.ones(c.nheads))  # (H,)
        self.norm = GatedRMSNorm(c.d_inner, c.d_inner // c.ngroups)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(c.n_layer)
        self._A, self._A_key = None, None

    def _decode_A(self) -> Tensor:
        """A = -exp(A_log) (H,) for step, recomputed only when A_log was written or moved."""
        key = (self.A_log._version, self.A_log.data_ptr())  # load_state_dict and optimizers bump _version
        if key != self._A_key:
            self._A, self._A_key = -torch.exp(self.A_log.detach().float()), key
        return self._A

    def _split(self, projected: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj's output (..., d_in_proj) -> z (..., d_inner), xBC (..., conv_dim), dt (..., H)."""
        return projected.split([self.d_inner, projected.shape[-1] - self.d_inner - self.nheads, self.nheads], dim=-1)

    def _heads(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """xBC (..., conv_dim) -> x (..., H, P), B and C (..., G, N)."""
        GN = self.ngroups * self.d_state
        x, B, C = xBC.split([self.d_inner, GN, GN], dim=-1)
        return x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (self.ngroups, -1)), C.unflatten(-1, (self.ngroups, -1))

    def forward(self, hidden: Tensor, conv_state: Tensor | None = None, ssm_state: Tensor | None = None) -> Tensor:
        """hidden (B, L, d_model) -> (B, L, d_model). With states (prefill): continue from them and
        update them in place."""
        kernels = _kernels() if hidden.is_cuda else None
        z, xBC, dt = self._split(self.in_proj(hidden))  # (B, L, d_inner | conv_dim | H)
        if kernels and kernels.causal_conv1d_fn and conv_state is None:
            xBC = kernels.causal_conv1d_fn(
                xBC.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu"
            ).transpose(1, 2)
        else:
            xBC = self._conv_silu(xBC, conv_state)
        x, B, C = self._heads(xBC)
        A = -torch.exp(self.A_log.float())  # (H,)
        if kernels:
            y = kernels.mamba_chunk_scan_combined(
                x, dt, A, B, C, self.chunk_size, D=self.D.float(), dt_bias=self.dt_bias.float(), dt_softplus=True,
                initial_states=ssm_state, return_final_states=ssm_state is not None,
            )
            if ssm_state is not None:
                y, h = y
                ssm_state.copy_(h.detach())
        else:
            delta = F.softplus(dt.float() + self.dt_bias.float())  # Δ (B, L, H)
            y, h = ssd_chunked(x, delta, A, B, C, self.chunk_size, ssm_state)
            y = y + self.D.float()[:, None] * x.float()
            if ssm_state is not None:
                ssm_state.copy_(h.detach())
        y = self.norm(y.flatten(-2).to(z.dtype), z)  # (B, L, d_inner)
        return self.out_proj(y)

    def _conv_silu(self, xBC: Tensor, conv_state: Tensor | None) -> Tensor:
        """silu(causal conv) on xBC (B, L, conv_dim), updating conv_state (B, conv_dim, W) in place."""
        W = self.conv1d.kernel_size[0]
        history = None if conv_state is None else conv_state[..., 1:].transpose(1, 2)  # (B, W-1, conv_dim)
        out = causal_conv_silu(xBC, history, self.conv1d.weight[:, 0], self.conv1d.bias)
        if conv_state is not None:
            window = torch.cat([history.to(xBC.dtype), xBC[:, -W:]], dim=1)[:, -W:]  # (B, W, conv_dim): the last W inputs
            conv_state.copy_(window.detach().transpose(1, 2))
        return out.to(xBC.dtype)

    def step(self, hidden: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One token: hidden (B, d_model) -> (B, d_model); conv_state and ssm_state updated in place."""
        z, xBC, dt = self._split(F.linear(hidden, self.in_proj.weight))  # (B, d_inner | conv_dim | H)
        kernels = _kernels() if hidden.is_cuda else None
        if kernels and kernels.causal_conv1d_update:
            # The kernel wants xBC in the state's dtype; under autocast it is bf16, the state fp32.
            xBC = kernels.causal_conv1d_update(
                xBC.to(conv_state.dtype), conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, "silu"
            )
        else:
            window = torch.cat([conv_state[..., 1:], xBC[..., None]], dim=-1)  # (B, conv_dim, W): last W inputs
            conv_state.copy_(window)
            xBC = F.silu(torch.sum(window * self.conv1d.weight[:, 0], dim=-1) + self.conv1d.bias)
        x, B, C = self._heads(xBC)  # (B, H, P), (B, G, N) x 2
        A = self._decode_A()  # (H,)
        if kernels:
            H, P, N = self.nheads, self.headdim, self.d_state
            y = kernels.selective_state_update(  # the head's A, Δ and D broadcast over its P channels
                ssm_state, x, dt[..., None].expand(-1, H, P), A[:, None, None].expand(H, P, N), B, C,
                self.D[:, None].expand(H, P), dt_bias=self.dt_bias[:, None].expand(H, P), dt_softplus=True,
            )
        else:
            delta = F.softplus(dt.float() + self.dt_bias.float())  # Δ (B, H)
            b, R = x.shape[0], self.nheads // self.ngroups
            h = ssm_state.view(b, self.ngroups, R, self.headdim, self.d_state)  # (B, G, R, P, N)
            # h = exp(Δ A) h + Δ x B^T;  y = h C + D x, in place: (B, G, R, P, N)
            h.mul_(torch.exp(delta * A).view(b, self.ngroups, R, 1, 1))
            h.add_((delta[..., None] * x).view(b, self.ngroups, R, -1, 1) * B[:, :, None, None])
            y = (h @ C[:, :, None, :, None]).view(b, self.nheads, self.headdim)
            y = torch.addcmul(y, self.D[:, None], x)  # (B, H, P)
        return F.linear(self.norm(y.flatten(-2).to(z.dtype), z), self.out_proj.weight)  # (B, d_model)


class Mamba2Policy(Policy):
    """Mamba-2 language model (mamba-ssm's MambaLMHeadModel layout) behind the Policy interface."""

    config: Mamba2Config
    static_state = True

    def __init__(self, config: Mamba2Config):
        super().__init__(config)
        d = config.d_model
        self.backbone = nn.ModuleDict(
            dict(
                embedding=nn.Embedding(config.padded_vocab_size, d),
                layers=nn.ModuleList(
                    nn.ModuleDict(dict(norm=nn.RMSNorm(d, eps=1e-5), mixer=Mamba2Mixer(config)))
                    for _ in range(config.n_layer)
                ),
                norm_f=nn.RMSNorm(d, eps=1e-5),
            )
        )
        self.lm_head = nn.Linear(d, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight  # tied, as in mamba-ssm
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Mamba2State:
        c, weight = self.config, self.backbone.embedding.weight
        device = weight.device if device is None else device
        return Mamba2State(
            conv=torch.zeros(c.n_layer, batch_size, c.conv_dim, c.d_conv, device=device, dtype=weight.dtype),
            ssm=torch.zeros(c.n_layer, batch_size, c.nheads, c.headdim, c.d_state, device=device, dtype=torch.float32),
        )

    def _logits(self, residual: Tensor) -> Tensor:
        """residual (..., d_model) -> logits (..., vocab_size) float32; padded rows never scored."""
        hidden = self.backbone.norm_f(residual)
        return F.linear(hidden, self.lm_head.weight[: self.config.vocab_size]).float()

    def forward(self, tokens: Tensor, state: Mamba2State | None = None) -> Tensor:
        # mamba-ssm's add -> norm -> mixer order, with the residual stream kept in fp32.
        residual = self.backbone.embedding(tokens).float()  # (B, L, d_model)
        for i, layer in enumerate(self.backbone.layers):
            states = (None, None) if state is None else (state.conv[i], state.ssm[i])
            residual = residual + layer.mixer(layer.norm(residual), *states)
        return self._logits(residual)  # (B, L, vocab_size)

    @torch.no_grad()
    def step(self, token: Tensor, state: Mamba2State) -> Tensor:
        residual = self.backbone.embedding(token).float()  # (B, d_model)
        for layer, conv_state, ssm_state in zip(self.backbone.layers, state.conv, state.ssm):
            residual = residual + layer.mixer.step(layer.norm(residual), conv_state, ssm_state)
        return self._logits(residual)  # (B, vocab_size)

    def state_nbytes(self, state: Mamba2State) -> int:
        return state.conv.nbytes + state.ssm.nbytes

    def reset_row(self, state: Mamba2State, row: int) -> None:
        state.conv[:, row].zero_()
        state.ssm[:, row].zero_()
