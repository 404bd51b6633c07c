"""Mamba's whole decode step, every layer and the greedy choice, in one Triton kernel.

At large batch the step is bound by memory: each row's state (for the shipped model 4 layers x
256 channels x (16 SSM + 4 conv) values) is read and written once a step and is what the
hardware limit counts. The kernel-per-operation step (`mamba_cuda.FusedStep`, 6 kernels a layer)
also writes and reads every intermediate (x, z, Δ, B, C, y, the residual) through memory and
pays a launch each. Here one program takes BLOCK_M rows through all layers: the residual stream
stays in registers, each layer streams its state once in channel blocks of BLOCK_C, and only
the conv output u (BLOCK_M x d_inner, which the second pass over the channels needs after Δ, B
and C are complete) goes through a scratch buffer that stays in cache. Weights are prepared once
(transposed, the norm gains folded in) and read from L2 by every program.

The state may be fp32 (the policy's) or bf16 (half the bytes; arithmetic stays fp32).
`tests/test_step_kernel.py` runs the kernel in Triton's interpreter on the CPU against
`policy.step` (and compiled on a GPU); eval/bench.py times it.

What it measured (H200, 2026-11-29): 1.25 ms a step at 16,384 rows with a bf16 state, 22% of
the bandwidth limit (FusedStep, fp32 state: ~1.9 ms), and 0.29 ms at batch 1, where
`mamba_cuda.FusedStep` takes 0.080 ms. Both
say the same thing: a program walks its rows through 4 layers x 2 passes x 16 channel blocks in
sequence, so a step costs at least that chain's latency, and a large batch is fast only as far
as the GPU holds its programs at once (bf16 instead of fp32 state saved only 10%). So the
runtime's decoder keeps FusedStep. Compiled for sm_90 the program needs 255 registers a thread
and spills, so an SM holds 8 of its warps (`kernel_resources.py`); `mamba_split_kernel.py`
splits the step into kernels that fit 16-32 warps an SM and is 2.3x faster at 32,768 rows.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from mamba_agent.policies.mamba import MambaState


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    """a @ b with a cast to b's dtype (the weights': fp32, or bf16 for half the bytes)."""
    return tl.dot(a.to(b.dtype), b, input_precision=PRECISION)


@triton.jit
def _logits_greedy(xn, head_ptr, logits_ptr, greedy_ptr, rows, row_ok, dcol, d_ok, V, VP: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, STORE_LOGITS: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Logits of the normed residual xn (head: (D, VP), the final norm's gain folded in), stored if
    STORE_LOGITS, and the greedy pick: the first maximum, as torch.argmax."""
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_id = tl.zeros((BLOCK_M,), tl.int32)
    for v0 in range(0, VP, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        logits = _mm(xn, tl.load(head_ptr + dcol[:, None] * VP + v[None, :], mask=d_ok[:, None], other=0.0),
                     PRECISION)
        logits = tl.where(v[None, :] < V, logits, float("-inf"))
        if STORE_LOGITS:
            tl.store(logits_ptr + rows[:, None] * V + v[None, :], logits, mask=row_ok[:, None] & (v[None, :] < V))
        m = tl.max(logits, axis=1)
        i = tl.argmax(logits, axis=1) + v0
        better = m > best
        best_id = tl.where(better, i, best_id)
        best = tl.where(better, m, best)
    tl.store(greedy_ptr + rows, best_id, mask=row_ok)


@triton.jit
def _mamba_step(
    tok_ptr, emb_ptr, w_in_ptr, conv_w_ptr, conv_b_ptr, w_xdt_ptr, w_xb_ptr, w_xc_ptr, w_dt_ptr, dt_b_ptr,
    a_ptr, d_ptr, w_out_ptr, head_ptr, conv_ptr, ssm_ptr, u_ptr, logits_ptr, greedy_ptr,
    B, V, eps,
    L: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, DI: tl.constexpr, N: tl.constexpr, R: tl.constexpr,
    W: tl.constexpr, VP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr,
    STORE_LOGITS: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    dcol = tl.arange(0, DP)
    d_ok = dcol < D
    n = tl.arange(0, N)
    r = tl.arange(0, R)
    tok = tl.load(tok_ptr + rows, mask=row_ok, other=0)
    res = tl.load(emb_ptr + tok[:, None] * D + dcol[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    for layer in range(L):
        # RMSNorm (its gain is folded into w_in).
        xn = res / tl.sqrt(tl.sum(res * res, axis=1) / D + eps)[:, None]
        w_in = w_in_ptr + layer * D * 2 * DI
        # Pass 1 over channel blocks: x = in_proj, the causal conv step, u = silu(conv), and the
        # low-rank Δ, B and C, which need every channel's u.
        dt_low = tl.zeros((BLOCK_M, R), tl.float32)
        b = tl.zeros((BLOCK_M, N), tl.float32)
        c = tl.zeros((BLOCK_M, N), tl.float32)
        for c0 in range(0, DI, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            x = _mm(xn, tl.load(w_in + dcol[:, None] * 2 * DI + ch[None, :], mask=d_ok[:, None], other=0.0),
                       PRECISION)  # (M, C)
            window = conv_ptr + ((layer * B + rows[:, None]) * DI + ch[None, :]) * W  # (B, DI, W) layout
            acc = tl.load(conv_b_ptr + layer * DI + ch)[None, :] + x * tl.load(conv_w_ptr + (layer * W + W - 1) * DI + ch)[None, :]
            for k in tl.static_range(W - 1):  # shift the window left by one, append x
                s = tl.load(window + k + 1, mask=row_ok[:, None], other=0.0).to(tl.float32)
                tl.store(window + k, s.to(conv_ptr.dtype.element_ty), mask=row_ok[:, None])
                acc += s * tl.load(conv_w_ptr + (layer * W + k) * DI + ch)[None, :]
            tl.store(window + W - 1, x.to(conv_ptr.dtype.element_ty), mask=row_ok[:, None])
            u = acc * tl.sigmoid(acc)
            tl.store(u_ptr + rows[:, None] * DI + ch[None, :], u, mask=row_ok[:, None])
            w_x = (layer * DI + ch[:, None])
            dt_low += _mm(u, tl.load(w_xdt_ptr + w_x * R + r[None, :]), PRECISION)
            b += _mm(u, tl.load(w_xb_ptr + w_x * N + n[None, :]), PRECISION)
            c += _mm(u, tl.load(w_xc_ptr + w_x * N + n[None, :]), PRECISION)
        # Pass 2: Δ, the SSM update h = exp(Δ A) h + Δ B u, y = (C h + D u) silu(z), out_proj.
        mixed = tl.zeros((BLOCK_M, DP), tl.float32)
        for c0 in range(0, DI, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            u = tl.load(u_ptr + rows[:, None] * DI + ch[None, :], mask=row_ok[:, None], other=0.0)
            dt = _mm(dt_low, tl.load(w_dt_ptr + (layer * R + r[:, None]) * DI + ch[None, :]), PRECISION)
            dt += tl.load(dt_b_ptr + layer * DI + ch)[None, :]
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus, as torch's
            z = _mm(xn, tl.load(w_in + dcol[:, None] * 2 * DI + DI + ch[None, :], mask=d_ok[:, None], other=0.0),
                       PRECISION)
            h_ptrs = ssm_ptr + ((layer * B + rows[:, None, None]) * DI + ch[None, :, None]) * N + n[None, None, :]
            h = tl.load(h_ptrs, mask=row_ok[:, None, None], other=0.0).to(tl.float32)  # (M, C, N)
            a = tl.load(a_ptr + (layer * DI + ch[:, None]) * N + n[None, :])  # (C, N)
            h = h * tl.exp(dt[:, :, None] * a[None, :, :]) + (dt * u)[:, :, None] * b[:, None, :]
            tl.store(h_ptrs, h.to(ssm_ptr.dtype.element_ty), mask=row_ok[:, None, None])
            y = tl.sum(h * c[:, None, :], axis=2) + tl.load(d_ptr + layer * DI + ch)[None, :] * u
            y = y * z * tl.sigmoid(z)
            mixed += _mm(y, tl.load(w_out_ptr + (layer * DI + ch[:, None]) * D + dcol[None, :], mask=d_ok[None, :], other=0.0),
                            PRECISION)
        res += mixed
    # Final RMSNorm (gain folded into head), logits, greedy.
    xn = res / tl.sqrt(tl.sum(res * res, axis=1) / D + eps)[:, None]
    _logits_greedy(xn, head_ptr, logits_ptr, greedy_ptr, rows, row_ok, dcol, d_ok, V, VP, BLOCK_M, BLOCK_V,
                   STORE_LOGITS, PRECISION)


class StepKernel:
    """`step(token, state) -> logits` with `policy.step`'s signature, and `greedy(token, state,
    out)`, which writes only the argmax ids. Weights are copied when this is made."""

    def __init__(self, policy, block_m: int = 16, block_c: int = 16, precision: str = "ieee", num_warps: int = 2,
                 num_stages: int = 3, weight_dtype: str = "float32"):
        """Tiles: `block_m` rows a program, `block_c` channels a block, `num_stages` tiles of a
        channel loop prefetched into shared memory. The defaults were the fastest on the H200 at
        16,384 rows (eval/results/2026-11-29-throughput-h200); wider tiles with 3 stages overflow
        shared memory (Triton raises OutOfResources). `precision`: of fp32 matmuls, "ieee"
        (exact) or "tf32" (tensor cores, ~1e-3 relative); `weight_dtype` "bfloat16" runs the
        matmuls in bf16 (the SSM arithmetic stays fp32)."""
        c, bb = policy.config, policy.backbone
        weight_dtype = getattr(torch, weight_dtype)
        self.config, self.block_m, self.block_c = c, block_m, block_c
        self.num_warps, self.num_stages, self.precision = num_warps, num_stages, precision
        D, DI, N, R = c.d_model, c.d_inner, c.d_state, c.dt_rank
        if DI % block_c or N < 16 or N & (N - 1):
            raise ValueError(f"the kernel needs d_inner ({DI}) a multiple of block_c ({block_c}) and d_state "
                             f"({N}) a power of 2, at least 16")
        self.R = max(16, triton.next_power_of_2(R))  # Δ's rank, zero-padded to a tl.dot size
        self.DP = triton.next_power_of_2(D)
        self.block_v = 64
        self.VP = triton.cdiv(c.vocab_size, self.block_v) * self.block_v

        def stack(f, dtype=torch.float32):
            return torch.stack([f(layer.mixer, layer.norm) for layer in bb.layers]).detach().to(dtype).contiguous()

        def pad_rows(t: Tensor, rows: int) -> Tensor:
            return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])

        self.w_in = stack(lambda m, norm: (m.in_proj.weight * norm.weight).t(), weight_dtype)  # (L, D, 2 DI)
        self.conv_w = stack(lambda m, _: m.conv1d.weight[:, 0].t())  # (L, W, DI)
        self.conv_b = stack(lambda m, _: m.conv1d.bias)
        self.w_xdt = stack(lambda m, _: pad_rows(m.x_proj.weight[:R], self.R).t(), weight_dtype)  # (L, DI, R)
        self.w_xb = stack(lambda m, _: m.x_proj.weight[R : R + N].t(), weight_dtype)  # (L, DI, N)
        self.w_xc = stack(lambda m, _: m.x_proj.weight[R + N :].t(), weight_dtype)
        self.w_dt = stack(lambda m, _: pad_rows(m.dt_proj.weight.t(), self.R), weight_dtype)  # (L, R, DI)
        self.dt_b = stack(lambda m, _: m.dt_proj.bias)
        self.A = stack(lambda m, _: -torch.exp(m.A_log.float()))  # (L, DI, N)
        self.skip = stack(lambda m, _: m.D)  # D, the skip term (L, DI)
        self.w_out = stack(lambda m, _: m.out_proj.weight.t(), weight_dtype)  # (L, DI, D)
        emb = bb.embedding.weight.detach().float()
        self.embedding = emb.contiguous()
        self.head = pad_rows(emb[: c.vocab_size] * bb.norm_f.weight.detach(), self.VP).t().to(weight_dtype).contiguous()  # (D, VP)
        self.eps = bb.norm_f.eps
        self.u = None  # scratch (B, DI), made for the batch size in use

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> MambaState:
        """A zero state for this kernel in `dtype` (float32 or bfloat16), in the policy's layouts."""
        c, device = self.config, device or self.w_in.device
        return MambaState(torch.zeros(c.n_layer, batch_size, c.d_inner, c.d_conv, device=device, dtype=dtype),
                          torch.zeros(c.n_layer, batch_size, c.d_inner, c.d_state, device=device, dtype=dtype))

    def _launch(self, token: Tensor, state, logits: Tensor | None, greedy: Tensor) -> None:
        c, B = self.config, token.shape[0]
        if state.ssm.numel() >= 2**31 or state.conv.numel() >= 2**31:  # offsets are int32 in the kernel
            raise ValueError(f"a state of {state.ssm.numel():,} values is too large for this kernel's int32 offsets: "
                             "use fewer rows")
        if self.u is None or self.u.shape[0] != B:
            self.u = torch.empty(B, c.d_inner, device=token.device, dtype=torch.float32)
        _mamba_step[(triton.cdiv(B, self.block_m),)](
            token, self.embedding, self.w_in, self.conv_w, self.conv_b, self.w_xdt, self.w_xb, self.w_xc,
            self.w_dt, self.dt_b, self.A, self.skip, self.w_out, self.head, state.conv, state.ssm, self.u,
            greedy if logits is None else logits, greedy, B, c.vocab_size, self.eps,
            L=c.n_layer, D=c.d_model, DP=self.DP, DI=c.d_inner, N=c.d_state, R=self.R, W=c.d_conv, VP=self.VP,
            BLOCK_M=self.block_m, BLOCK_C=self.block_c, BLOCK_V=self.block_v, STORE_LOGITS=logits is not None,
            PRECISION=self.precision, num_warps=self.num_warps, num_stages=self.num_stages,
        )

    @torch.no_grad()
    def __call__(self, token: Tensor, state) -> Tensor:
        logits = torch.empty(token.shape[0], self.config.vocab_size, device=token.device, dtype=torch.float32)
        self._launch(token, state, logits, torch.empty_like(token, dtype=torch.int32))
        return logits

    @torch.no_grad()
    def greedy(self, token: Tensor, state, out: Tensor) -> Tensor:
        """out (B,) int32: the argmax ids after `token`; nothing else is written but the state."""
        self._launch(token, state, None, out)
        return out
