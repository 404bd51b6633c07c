"""Mamba's decode step on CUDA in few kernels: the `fused` stepper (mamba_agent/steppers.py).

At batch 1 a step of a small model is launch-bound: inside a graph each kernel costs ~2 us
whatever it computes, so the step's time is its kernel count. `policy.step` takes ~10 a layer
(RMSNorm, residual add, the convolution step as six tensor ops, Δ's own projection, ...); this
step takes 6: residual add + RMSNorm (one Triton kernel, below), in_proj, the convolution step +
SiLU (one Triton kernel, below), x_proj with Δ's projection folded in (dt_proj.weight @
x_proj.weight[:R], made once), mamba-ssm's selective_state_update, out_proj. The weights are
prepared when the stepper is made: one made before training steps would use old weights.
Imported only on CUDA (Triton); the GPU tests compare it with `policy.step`.
"""

from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _add_rms_norm(x_ptr, residual_ptr, weight_ptr, out_ptr, D, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    """One row per program: residual = x (+ residual), in place, fp32; out = RMSNorm(residual)."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(residual_ptr + row * D + cols, mask=mask, other=0.0)
    tl.store(residual_ptr + row * D + cols, x, mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * D + cols, x * rstd * weight, mask=mask)


@triton.jit
def _conv_step(x_ptr, x_row_stride, state_ptr, weight_ptr, bias_ptr, out_ptr, D, W: tl.constexpr, BLOCK: tl.constexpr):
    """Program (row, block of channels): shift the last W inputs (state, (B, D, W) contiguous) left
    by one, append x, and write silu(bias + the window . weight)."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    window = state_ptr + row * D * W + cols * W
    acc = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    for k in tl.static_range(W - 1):
        s = tl.load(window + k + 1, mask=mask, other=0.0)
        tl.store(window + k, s, mask=mask)
        acc += s * tl.load(weight_ptr + cols * W + k, mask=mask, other=0.0)
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    tl.store(window + W - 1, x, mask=mask)
    acc += x * tl.load(weight_ptr + cols * W + W - 1, mask=mask, other=0.0)
    tl.store(out_ptr + row * D + cols, acc * tl.sigmoid(acc), mask=mask)


class FusedStep:
    """`step(token, state)` with `policy.step`'s signature and logits, in 6 kernels a layer.
    `state_update`: mamba-ssm's selective_state_update (its signature)."""

    def __init__(self, policy, state_update: Callable):
        c, bb = policy.config, policy.backbone
        self.d_model, self.d_inner, self.N, self.W = c.d_model, c.d_inner, c.d_state, c.d_conv
        self.state_update = state_update
        self.embedding = bb.embedding.weight.detach()
        self.layers = []
        for layer in bb.layers:
            m = layer.mixer
            x_proj = m.x_proj.weight.detach()
            dt_x = m.dt_proj.weight.detach() @ x_proj[: m.dt_rank]  # (d_inner, d_inner): Δ's two projections as one
            self.layers.append(dict(
                norm=layer.norm.weight.detach(), eps=layer.norm.eps,
                in_proj=m.in_proj.weight.detach(),
                conv_weight=m.conv1d.weight.detach()[:, 0].contiguous(), conv_bias=m.conv1d.bias.detach(),
                x_proj=torch.cat([dt_x, x_proj[m.dt_rank :]]).contiguous(),  # (d_inner + 2N, d_inner)
                dt_bias=m.dt_proj.bias.detach(), A=-torch.exp(m.A_log.detach().float()), D=m.D.detach(),
                out_proj=m.out_proj.weight.detach(),
            ))
        self.norm_f, self.eps_f = bb.norm_f.weight.detach(), bb.norm_f.eps
        self.lm_head = policy.lm_head.weight.detach()[: c.vocab_size]
        self.norm_block = triton.next_power_of_2(self.d_model)
        self.conv_block = min(256, triton.next_power_of_2(self.d_inner))

    @torch.no_grad()
    def __call__(self, token: Tensor, state) -> Tensor:
        B, d, di = token.shape[0], self.d_model, self.d_inner
        hidden = F.embedding(token, self.embedding)  # (B, d_model)
        residual = torch.empty(B, d, device=token.device, dtype=torch.float32)
        normed = torch.empty_like(residual)
        conv_out = torch.empty(B, di, device=token.device, dtype=hidden.dtype)
        conv_grid = (B, triton.cdiv(di, self.conv_block))
        for i, L in enumerate(self.layers):
            _add_rms_norm[(B,)](hidden, residual, L["norm"], normed, d, L["eps"], HAS_RESIDUAL=i > 0, BLOCK=self.norm_block)
            xz = F.linear(normed, L["in_proj"])  # (B, 2 d_inner): x | z
            _conv_step[conv_grid](xz, xz.stride(0), state.conv[i], L["conv_weight"], L["conv_bias"], conv_out, di,
                                  W=self.W, BLOCK=self.conv_block)
            dt, Bc, C = F.linear(conv_out, L["x_proj"]).split([di, self.N, self.N], dim=-1)
            y = self.state_update(state.ssm[i], conv_out, dt, L["A"], Bc, C, L["D"], z=xz[:, di:],
                                  dt_bias=L["dt_bias"], dt_softplus=True)
            hidden = F.linear(y, L["out_proj"])  # (B, d_model)
        _add_rms_norm[(B,)](hidden, residual, self.norm_f, normed, d, self.eps_f, HAS_RESIDUAL=True, BLOCK=self.norm_block)
        return F.linear(normed, self.lm_head).float()  # (B, vocab_size)
