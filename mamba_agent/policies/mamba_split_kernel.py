"""Mamba's decode step in kernels over (row block, channel block): a shorter chain than StepKernel.

StepKernel (mamba_step_kernel.py) gives each program 16 rows and walks them through every layer
and channel block in sequence; on the H200 that chain's latency, not memory bandwidth, set its
speed (22% of the bandwidth limit at 32,768 rows). Here every layer is two kernels whose programs
each take one block of rows and one block of channels, so a program's chain is one block long:
  1. `_mix_in`: RMSNorm of the residual, x and z = in_proj, the causal conv step, u = silu(conv);
     u and z to scratch; this block's share of x_proj (Δ's low rank, B, C) added atomically.
  2. `_ssm_out`: Δ = softplus(dt_proj), the SSM update h = exp(Δ A) h + Δ B u, y = (C h + D u)
     silu(z), and this block's share of out_proj added atomically into `mixed`.
then `_residual` adds `mixed` to the residual (and clears the sums for the next layer), and
`_head` takes the final norm, the logits and the greedy pick. 3 L + 2 launches a step.

NOT YET TIMED ON A GPU (branch split-step-kernel, 2026-11-29): tests/test_split_kernel.py checks
it against policy.step in Triton's interpreter. The atomics make the sums' order, and so the last
bits of the result, vary from run to run.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba_agent.policies.mamba_step_kernel import StepKernel


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    return tl.dot(a.to(b.dtype), b, input_precision=PRECISION)


@triton.jit
def _embed(tok_ptr, emb_ptr, res_ptr, dbc_ptr, mixed_ptr, B, D: tl.constexpr, DP: tl.constexpr,
           S: tl.constexpr, BLOCK_M: tl.constexpr):
    """res = embedding(tok); the atomic sums cleared."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    d = tl.arange(0, DP)
    m = row_ok[:, None] & (d[None, :] < D)
    tok = tl.load(tok_ptr + rows, mask=row_ok, other=0)
    tl.store(res_ptr + rows[:, None] * D + d[None, :], tl.load(emb_ptr + tok[:, None] * D + d[None, :], mask=m, other=0.0), mask=m)
    tl.store(mixed_ptr + rows[:, None] * D + d[None, :], tl.zeros((BLOCK_M, DP), tl.float32), mask=m)
    s = tl.arange(0, S)
    tl.store(dbc_ptr + rows[:, None] * S + s[None, :], tl.zeros((BLOCK_M, S), tl.float32), mask=row_ok[:, None])


@triton.jit
def _mix_in(res_ptr, w_in_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, u_ptr, z_ptr, w_xdt_ptr, w_xb_ptr, w_xc_ptr,
            dbc_ptr, B, eps, D: tl.constexpr, DP: tl.constexpr, DI: tl.constexpr, N: tl.constexpr, R: tl.constexpr,
            S: tl.constexpr, W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    d = tl.arange(0, DP)
    d_ok = d < D
    res = tl.load(res_ptr + rows[:, None] * D + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    xn = res / tl.sqrt(tl.sum(res * res, axis=1) / D + eps)[:, None]  # RMSNorm; gain folded into w_in
    x = _mm(xn, tl.load(w_in_ptr + d[:, None] * 2 * DI + ch[None, :], mask=d_ok[:, None], other=0.0), PRECISION)
    z = _mm(xn, tl.load(w_in_ptr + d[:, None] * 2 * DI + DI + ch[None, :], mask=d_ok[:, None], other=0.0), PRECISION)
    window = conv_ptr + (rows[:, None] * DI + ch[None, :]) * W  # this layer's (B, DI, W)
    acc = tl.load(conv_b_ptr + ch)[None, :] + x * tl.load(conv_w_ptr + (W - 1) * DI + ch)[None, :]
    for k in tl.static_range(W - 1):  # shift the window left by one, append x
        s = tl.load(window + k + 1, mask=row_ok[:, None], other=0.0).to(tl.float32)
        tl.store(window + k, s.to(conv_ptr.dtype.element_ty), mask=row_ok[:, None])
        acc += s * tl.load(conv_w_ptr + k * DI + ch)[None, :]
    tl.store(window + W - 1, x.to(conv_ptr.dtype.element_ty), mask=row_ok[:, None])
    u = acc * tl.sigmoid(acc)
    tl.store(u_ptr + rows[:, None] * DI + ch[None, :], u, mask=row_ok[:, None])
    tl.store(z_ptr + rows[:, None] * DI + ch[None, :], z, mask=row_ok[:, None])
    r = tl.arange(0, R)
    n = tl.arange(0, N)
    dbc = dbc_ptr + rows[:, None] * S
    tl.atomic_add(dbc + r[None, :], _mm(u, tl.load(w_xdt_ptr + ch[:, None] * R + r[None, :]), PRECISION), mask=row_ok[:, None])
    tl.atomic_add(dbc + R + n[None, :], _mm(u, tl.load(w_xb_ptr + ch[:, None] * N + n[None, :]), PRECISION), mask=row_ok[:, None])
    tl.atomic_add(dbc + R + N + n[None, :], _mm(u, tl.load(w_xc_ptr + ch[:, None] * N + n[None, :]), PRECISION), mask=row_ok[:, None])


@triton.jit
def _ssm_out(u_ptr, z_ptr, dbc_ptr, w_dt_ptr, dt_b_ptr, a_ptr, d_ptr, ssm_ptr, w_out_ptr, mixed_ptr,
             B, D: tl.constexpr, DP: tl.constexpr, DI: tl.constexpr, N: tl.constexpr, R: tl.constexpr,
             S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r = tl.arange(0, R)
    n = tl.arange(0, N)
    dbc = dbc_ptr + rows[:, None] * S
    dt_low = tl.load(dbc + r[None, :], mask=row_ok[:, None], other=0.0)
    b = tl.load(dbc + R + n[None, :], mask=row_ok[:, None], other=0.0)
    c = tl.load(dbc + R + N + n[None, :], mask=row_ok[:, None], other=0.0)
    u = tl.load(u_ptr + rows[:, None] * DI + ch[None, :], mask=row_ok[:, None], other=0.0)
    z = tl.load(z_ptr + rows[:, None] * DI + ch[None, :], mask=row_ok[:, None], other=0.0)
    dt = _mm(dt_low, tl.load(w_dt_ptr + r[:, None] * DI + ch[None, :]), PRECISION) + tl.load(dt_b_ptr + ch)[None, :]
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus, as torch's
    h_ptrs = ssm_ptr + (rows[:, None, None] * DI + ch[None, :, None]) * N + n[None, None, :]
    h = tl.load(h_ptrs, mask=row_ok[:, None, None], other=0.0).to(tl.float32)
    a = tl.load(a_ptr + ch[:, None] * N + n[None, :])
    h = h * tl.exp(dt[:, :, None] * a[None, :, :]) + (dt * u)[:, :, None] * b[:, None, :]
    tl.store(h_ptrs, h.to(ssm_ptr.dtype.element_ty), mask=row_ok[:, None, None])
    y = tl.sum(h * c[:, None, :], axis=2) + tl.load(d_ptr + ch)[None, :] * u
    y = y * z * tl.sigmoid(z)
    d = tl.arange(0, DP)
    d_ok = d < D
    out = _mm(y, tl.load(w_out_ptr + ch[:, None] * D + d[None, :], mask=d_ok[None, :], other=0.0), PRECISION)
    tl.atomic_add(mixed_ptr + rows[:, None] * D + d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _residual(res_ptr, mixed_ptr, dbc_ptr, B, D: tl.constexpr, DP: tl.constexpr, S: tl.constexpr, BLOCK_M: tl.constexpr):
    """res += mixed; mixed and the x_proj sums cleared for the next layer."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    d = tl.arange(0, DP)
    m = row_ok[:, None] & (d[None, :] < D)
    ptrs = rows[:, None] * D + d[None, :]
    tl.store(res_ptr + ptrs, tl.load(res_ptr + ptrs, mask=m, other=0.0) + tl.load(mixed_ptr + ptrs, mask=m, other=0.0), mask=m)
    tl.store(mixed_ptr + ptrs, tl.zeros((BLOCK_M, DP), tl.float32), mask=m)
    s = tl.arange(0, S)
    tl.store(dbc_ptr + rows[:, None] * S + s[None, :], tl.zeros((BLOCK_M, S), tl.float32), mask=row_ok[:, None])


@triton.jit
def _head(res_ptr, head_ptr, logits_ptr, greedy_ptr, B, V, eps, D: tl.constexpr, DP: tl.constexpr,
          VP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, STORE_LOGITS: tl.constexpr,
          PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    d = tl.arange(0, DP)
    d_ok = d < D
    res = tl.load(res_ptr + rows[:, None] * D + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    xn = res / tl.sqrt(tl.sum(res * res, axis=1) / D + eps)[:, None]
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_id = tl.zeros((BLOCK_M,), tl.int32)
    for v0 in range(0, VP, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        logits = _mm(xn, tl.load(head_ptr + d[:, None] * VP + v[None, :], mask=d_ok[:, None], other=0.0), PRECISION)
        logits = tl.where(v[None, :] < V, logits, float("-inf"))
        if STORE_LOGITS:
            tl.store(logits_ptr + rows[:, None] * V + v[None, :], logits, mask=row_ok[:, None] & (v[None, :] < V))
        m = tl.max(logits, axis=1)
        i = tl.argmax(logits, axis=1) + v0
        better = m > best
        best_id = tl.where(better, i, best_id)
        best = tl.where(better, m, best)
    tl.store(greedy_ptr + rows, best_id, mask=row_ok)


class SplitStepKernel(StepKernel):
    """StepKernel's interface and prepared weights, the step in 3 L + 2 kernels."""

    def __init__(self, policy, block_m: int = 16, block_c: int = 32, precision: str = "ieee", num_warps: int = 4,
                 weight_dtype: str = "float32"):
        super().__init__(policy, block_m=block_m, block_c=block_c, precision=precision, num_warps=num_warps,
                         num_stages=1, weight_dtype=weight_dtype)
        self.buffers = None

    def _launch(self, token: Tensor, state, logits: Tensor | None, greedy: Tensor) -> None:
        c, B = self.config, token.shape[0]
        if state.ssm.numel() >= 2**31 or state.conv.numel() >= 2**31:  # offsets are int32 in the kernels
            raise ValueError(f"a state of {state.ssm.numel():,} values is too large for int32 offsets: use fewer rows")
        D, DI, N, R = c.d_model, c.d_inner, c.d_state, self.R
        S = triton.next_power_of_2(R + 2 * N)  # row stride of the x_proj sums [Δ low rank | B | C | unused]
        if self.buffers is None or self.buffers[0].shape[0] != B:
            f32 = dict(device=token.device, dtype=torch.float32)
            self.buffers = (torch.empty(B, D, **f32), torch.empty(B, D, **f32), torch.empty(B, S, **f32),
                            torch.empty(B, DI, **f32), torch.empty(B, DI, **f32))
        res, mixed, dbc, u, z = self.buffers
        rows, chans = triton.cdiv(B, self.block_m), DI // self.block_c
        common = dict(BLOCK_M=self.block_m, num_warps=self.num_warps)
        _embed[(rows,)](token, self.embedding, res, dbc, mixed, B, D=D, DP=self.DP, S=S, **common)
        for i in range(c.n_layer):
            _mix_in[(rows, chans)](
                res, self.w_in[i], self.conv_w[i], self.conv_b[i], state.conv[i], u, z, self.w_xdt[i], self.w_xb[i],
                self.w_xc[i], dbc, B, self.eps, D=D, DP=self.DP, DI=DI, N=N, R=R, S=S, W=c.d_conv,
                BLOCK_C=self.block_c, PRECISION=self.precision, **common)
            _ssm_out[(rows, chans)](
                u, z, dbc, self.w_dt[i], self.dt_b[i], self.A[i], self.skip[i], state.ssm[i], self.w_out[i], mixed,
                B, D=D, DP=self.DP, DI=DI, N=N, R=R, S=S, BLOCK_C=self.block_c, PRECISION=self.precision, **common)
            _residual[(rows,)](res, mixed, dbc, B, D=D, DP=self.DP, S=S, **common)
        _head[(rows,)](res, self.head, greedy if logits is None else logits, greedy, B, c.vocab_size, self.eps,
                       D=D, DP=self.DP, VP=self.VP, BLOCK_V=self.block_v, STORE_LOGITS=logits is not None,
                       PRECISION=self.precision, **common)
