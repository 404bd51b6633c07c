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

import numpy as np
import threadpoolctl
import torch
import torch.nn.functional as F
from pydantic import PositiveInt, model_validator
from torch import Tensor, nn

from mamba_agent.policies.base import CUDAGraphDecoder, Decoder, Policy, PolicyConfig
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

    def decoder(self, batch_size: int, device: torch.device | str | None = None) -> Decoder:
        device = torch.device(device) if device is not None else self.backbone.embedding.weight.device
        if device.type == "cuda":
            kernels, step = _kernels(), None
            if kernels and self.backbone.embedding.weight.dtype == torch.float32:
                from mamba_agent.policies.mamba_cuda import FusedStep  # Triton: CUDA only

                step = FusedStep(self, kernels.selective_state_update)
            return CUDAGraphDecoder(self, batch_size, device, step=step)
        if device.type == "cpu" and self.backbone.embedding.weight.dtype == torch.float32:
            return CPUDecoder(self, batch_size)
        return Decoder(self, batch_size, device)


class CPUDecoder(Decoder):
    """The decode step on the CPU in NumPy, weights prepared once and every buffer allocated once.

    At batch 1 the step is ~0.7M multiply-adds, tens of microseconds of arithmetic; PyTorch's
    2-10 us per operation (dispatch, allocation) made it 1.2 ms, NumPy with `out=` into fixed
    buffers costs ~1 us. It works on NumPy views of the policy's state tensors, so `prefill`
    (PyTorch) and `step` continue each other's state. Folded once into the weights, to save
    operations per token: each RMSNorm gain into the matrix after it (W (g x) = (W diag g) x),
    the Δ bias as an extra input column that is always 1. The conv state is a ring: a step
    writes its input over the oldest one and the conv uses the weights rotated to match (two
    strided copies a layer fewer); `prefill` first puts the ring back in PyTorch's order.
    """

    def __init__(self, policy: MambaPolicy, batch_size: int):
        super().__init__(policy, batch_size, "cpu")
        c, B, f32 = policy.config, batch_size, np.float32
        # NumPy's BLAS would start its own threads for these small products, which only contend
        # with each other (at batch 1 it cost a third of the step): use as many as torch does.
        threadpoolctl.threadpool_limits(torch.get_num_threads(), user_api="blas")
        di, N, R, d, W = c.d_inner, c.d_state, c.dt_rank, c.d_model, c.d_conv
        self.eps_d = 1e-5 * d

        def weight(t: Tensor) -> np.ndarray:  # (out, in) -> (in, out): x @ W.T as x @ weight
            return t.detach().float().t().contiguous().numpy()

        def with_bias(w: Tensor, b: Tensor) -> np.ndarray:  # (out, in), (out,) -> (in + 1, out)
            return weight(torch.cat([w.detach(), b.detach()[:, None]], dim=1))

        def ring_weights(w: np.ndarray) -> list[np.ndarray]:
            """w (di, W), oldest input first -> for each slot p of the newest input, the weights
            in ring order: slot s holds the input (p - s) mod W steps old."""
            return [np.ascontiguousarray(w[:, [W - 1 - (p - s) % W for s in range(W)]]) for p in range(W)]

        # The ring slot of the newest input; at W - 1 the ring is in PyTorch's order.
        self.d_conv, self.slot = W, W - 1
        self.conv_states = list(self.state.conv.numpy())  # (B, di, W) a layer: views of the state
        # The norm divides by sqrt(sum x^2 + d eps), sqrt(d) times RMSNorm's divisor: folded here.
        gain = d**0.5
        # silu(v) = h + h tanh(h) with h = v / 2 (3 operations, not 4): the 1/2 is folded into
        # the conv (whose input, x, stays unscaled in the state) and into z's rows of in_proj.
        half_z = torch.cat([torch.ones(di), torch.full((di,), 0.5)])[:, None]
        self.layers = []
        for layer, conv, ssm in zip(policy.backbone.layers, self.state.conv.numpy(), self.state.ssm.numpy()):
            m = layer.mixer
            x_w = m.x_proj.weight.detach()  # rows [dt (R) | B (N) | C (N)], reordered [B | C | dt]
            self.layers.append((
                weight(m.in_proj.weight * layer.norm.weight * gain * half_z),  # (d, 2 di)
                ring_weights(m.conv1d.weight[:, 0].detach().float().numpy() / 2),  # W x (di, W)
                m.conv1d.bias.detach().float().numpy() / 2,
                weight(torch.cat([x_w[R:], x_w[:R]])),  # (di, 2N + R)
                with_bias(m.dt_proj.weight, m.dt_proj.bias),  # (R + 1, di)
                (-torch.exp(m.A_log.detach().float())).numpy(),  # A (di, N)
                m.D.detach().float().numpy(),  # (di,)
                weight(m.out_proj.weight),  # (di, d)
                conv,  # (B, di, W): view of the state
                [conv[..., slot] for slot in range(W)],  # its slots, where a step writes its input
                ssm,  # (B, di, N): view of the state
            ))
        emb = policy.backbone.embedding.weight.detach().float()
        self.embedding = emb.numpy()  # (V_padded, d)
        self.head = weight(emb[: c.vocab_size] * policy.backbone.norm_f.weight * gain)  # (d, V)
        self.tokens = np.zeros(B, np.int64)
        self.residual, self.mixed = np.zeros((B, d), f32), np.zeros((B, d), f32)
        self.scale = np.zeros((B, 1), f32)
        self.xz, self.tmp_xz = np.zeros((B, 2 * di), f32), np.zeros((B, 2 * di), f32)  # [x | z / 2]; x becomes the conv's output / 2
        self.dbc = np.ones((B, 2 * N + R + 1), f32)  # [B | C | dt (low rank) | 1]
        self.delta, self.y, self.tmp = (np.zeros((B, di), f32) for _ in range(3))
        self.dA, self.dBx = np.zeros((B, di, N), f32), np.zeros((B, di, N), f32)
        self.logits = np.zeros((B, c.vocab_size), f32)
        # Views into those buffers, made once: the step only fills them.
        xz, dbc = self.xz, self.dbc
        self.views = (
            xz[:, :di], xz[:, di:],  # x, z
            dbc[:, :-1], dbc[:, None, :N], dbc[:, N : 2 * N, None], dbc[:, 2 * N :],  # x_proj out, B, C, dt + 1
            self.delta[:, :, None], self.y[:, :, None],
        )

    def _norm_scale(self, x: np.ndarray) -> np.ndarray:
        """(B, 1): sqrt(sum(x^2) + d eps), the RMSNorm divisor times sqrt(d)."""
        np.vecdot(x, x, self.scale[:, 0])
        np.add(self.scale, self.eps_d, self.scale)
        return np.sqrt(self.scale, self.scale)

    def step(self, tokens: list[int]) -> Tensor:
        self._unnormed_logits(tokens)
        np.divide(self.logits, self._norm_scale(self.residual), self.logits)
        return torch.from_numpy(self.logits)

    def step_greedy(self, tokens: list[int]) -> list[int]:
        # The final norm scales each row's logits by a positive number: the argmax is the same without it.
        return self._unnormed_logits(tokens).argmax(-1).tolist()

    def _unnormed_logits(self, tokens: list[int]) -> np.ndarray:
        """The layers, then head(residual): the logits times the final norm's divisor."""
        # ufuncs as locals and outputs passed by position: ~0.15 us less a call, ~125 calls a step.
        mul, add, div, exp, tanh, matmul = np.multiply, np.add, np.divide, np.exp, np.tanh, np.matmul
        res, xz, tmp_xz, delta, y, tmp, dA, dBx, mixed = (
            self.residual, self.xz, self.tmp_xz, self.delta, self.y, self.tmp, self.dA, self.dBx, self.mixed,
        )
        x, z, x_proj_out, B, C, dt, delta_col, y_col = self.views
        slot = self.slot = (self.slot + 1) % self.d_conv  # over the oldest input
        self.tokens[:] = tokens
        np.take(self.embedding, self.tokens, 0, res)
        for in_w, conv_w, conv_b, x_w, dt_w, A, D, out_w, conv, conv_slots, h in self.layers:
            matmul(res, in_w, xz)
            div(xz, self._norm_scale(res), xz)  # [x | z / 2] = in_proj(norm(res))
            conv_slots[slot][...] = x  # the causal conv's window: x over the oldest input
            np.vecdot(conv, conv_w[slot], x)
            add(x, conv_b, x)  # (conv + bias) / 2
            tanh(xz, tmp_xz)  # silu of conv x and of z in one pass: h + h tanh(h), h = v / 2
            mul(tmp_xz, xz, tmp_xz)
            add(xz, tmp_xz, xz)
            matmul(x, x_w, x_proj_out)
            matmul(dt, dt_w, delta)  # dt_proj + bias
            # Δ = softplus(delta) = log(1 + e^t), as max(t, log1p(e^min(t, 20))): exact in fp32
            np.minimum(delta, 20, out=tmp)
            exp(tmp, tmp)
            np.log1p(tmp, tmp)
            np.maximum(delta, tmp, out=delta)
            # h = exp(Δ A) h + (Δ x) B;  y = (C h + D x) silu(z)
            mul(delta_col, A, dA)
            exp(dA, dA)
            mul(h, dA, h)
            mul(delta, x, delta)
            mul(delta_col, B, dBx)
            add(h, dBx, h)
            matmul(h, C, y_col)
            mul(D, x, tmp)
            add(y, tmp, y)
            mul(y, z, y)
            matmul(y, out_w, mixed)
            add(res, mixed, res)
        return matmul(res, self.head, self.logits)

    def prefill(self, tokens: list[list[int]]) -> Tensor:
        self._unring()
        return super().prefill(tokens)

    def state_dict(self) -> dict[str, Tensor]:
        self._unring()
        return super().state_dict()

    def load_state_dict(self, saved: dict[str, Tensor]) -> None:
        super().load_state_dict(saved)
        self.slot = self.d_conv - 1  # saved in PyTorch's order

    def _unring(self) -> None:
        """The conv ring back in PyTorch's order, oldest input first."""
        W = self.d_conv
        if self.slot != W - 1:
            order = [(self.slot + 1 + k) % W for k in range(W)]
            for conv in self.conv_states:
                conv[...] = conv[..., order]
            self.slot = W - 1
