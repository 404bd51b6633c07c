"""Mamba's decode step for large batches: four Triton kernels a layer, each shaped for what it moves.

The step is split where its shape changes, each program small enough that an SM holds 16-32 of
its warps (eval/kernel_resources.py counts them; the whole step in one kernel needed 255
registers a thread, spilled, and was 2.3x slower):
  1. `_out_norm`, over blocks of rows: the residual entering the layer (the embedding, or the
     residual plus out_proj(y) of the layer before) and its RMSNorm xn.
  2. `_in_conv`, over (rows, channels) like a GEMM tile: x, z = in_proj(xn), the causal conv step
     on the state's window, u = silu(conv x) and the gate silu(z).
  3. `_x_proj`, over blocks of rows: Δ (low rank), B and C of u, in one product.
  4. `_ssm`, one row and a block of channels a program: Δ = softplus(dt_proj),
     h = exp(Δ A) h + Δ B u, y = (C h + D u) gate. It streams the SSM state, most of the bytes.
`_head` takes the logits and the greedy pick: 4 L + 2 launches a step, no atomics, so results do
not depend on scheduling. u, the gate and y go through memory in the state's dtype (bf16 for an
8-bit state), xn in the weights'. Weights are prepared once (transposed, norm gains folded in).

Pairs (`greedy_pair`, `step_pair`): a row may read two tokens in one step where the second is
forced (a prompt token, or the observation of the read the first one is: the tensor rows'
pairs); the model's ignored choice after the first is never made, and the conv window and the
SSM state are read and written once for both.
The state may be fp32, bf16 or stored in 8 bits (float8_e4m3fn, rounded once a step when
stored): 20 KiB a row instead of 80. `_ssm` then updates it in fp16, two values an instruction
(10 mantissa bits against the state's 3), which needs fewer registers, so more warps an SM. What
each design choice measured, and what was tried and reverted: CHANGELOG.md (2026-11-29) and
eval/README.md.
"""

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba_agent.policies.mamba import MambaState

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # as Triton reads it: no inline PTX then


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
def _token_rows(n_feed_ptr, B, BLOCK_M: tl.constexpr):
    """This program's block of rows b, the token t = program_id(1) they read (the activations are
    token-major: row t B + b), and which of them read it: every row token 0, the rows whose
    n_feed is 2 token 1. Returns (t B + b, mask)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = rows < B
    if tl.program_id(1) > 0:
        ok &= tl.load(n_feed_ptr + rows, mask=ok, other=1) > 1
    return tl.program_id(1) * B + rows, ok


@triton.jit
def _out_norm(y_ptr, w_out_ptr, tok_ptr, emb_ptr, res_ptr, xn_ptr, n_feed_ptr, B, eps, D: tl.constexpr,
              DP: tl.constexpr, DI: tl.constexpr, FIRST: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """The residual entering a layer (the embedding, or res + out_proj(y) of the layer before) and
    its RMSNorm xn, in the weights' dtype (what the matmuls read); the gain is folded into them.
    Over the rows reading token program_id(1) (a block of second tokens none reads: no work)."""
    rows, row_ok = _token_rows(n_feed_ptr, B, BLOCK_M)
    if tl.program_id(1) > 0:
        if tl.max(row_ok.to(tl.int32)) == 0:
            return
    dcol = tl.arange(0, DP)
    d_ok = dcol < D
    m = row_ok[:, None] & d_ok[None, :]
    if FIRST:
        tok = tl.load(tok_ptr + rows, mask=row_ok, other=0)
        res = tl.load(emb_ptr + tok[:, None] * D + dcol[None, :], mask=m, other=0.0)
    else:
        res = tl.load(res_ptr + rows[:, None] * D + dcol[None, :], mask=m, other=0.0)
        for k0 in range(0, DI, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            y = tl.load(y_ptr + rows[:, None] * DI + k[None, :], mask=row_ok[:, None], other=0.0)
            res += _mm(y, tl.load(w_out_ptr + k[:, None] * D + dcol[None, :], mask=d_ok[None, :], other=0.0), PRECISION)
    tl.store(res_ptr + rows[:, None] * D + dcol[None, :], res, mask=m)
    xn = res / tl.sqrt(tl.sum(res * res, axis=1) / D + eps)[:, None]
    tl.store(xn_ptr + rows[:, None] * DP + dcol[None, :], xn.to(xn_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _in_conv(xn_ptr, w_in_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, u_ptr, gate_ptr, n_feed_ptr, B, D: tl.constexpr,
             DP: tl.constexpr, DI: tl.constexpr, T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
             PRECISION: tl.constexpr):
    """x and z = in_proj(xn) for a block of rows and channels, then the causal conv step (width
    4), u = silu(conv x) and the gate silu(z); with T = 2, of both tokens of the rows that read
    two (the second's conv window holds the first's x), the conv window moved on by 1 or 2."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    m = row_ok[:, None]
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    dcol = tl.arange(0, DP)
    d_ok = (dcol < D)[:, None]
    w_x = tl.load(w_in_ptr + dcol[:, None] * 2 * DI + ch[None, :], mask=d_ok, other=0.0)
    xn = tl.load(xn_ptr + rows[:, None] * DP + dcol[None, :], mask=m, other=0.0)
    # The conv window, this layer's (B, 4, DI): a row's 4 last inputs (the oldest first), each DI
    # contiguous values, so that each is a plain (rows, channels) tile.
    window = conv_ptr + rows[:, None] * 4 * DI + ch[None, :]
    w1 = tl.load(window + DI, mask=m, other=0.0).to(tl.float32)
    w2 = tl.load(window + 2 * DI, mask=m, other=0.0).to(tl.float32)
    w3 = tl.load(window + 3 * DI, mask=m, other=0.0).to(tl.float32)
    if T == 2:  # read first, whether needed or not: their latency overlaps the first token's work
        two = row_ok & (tl.load(n_feed_ptr + rows, mask=row_ok, other=1) == 2)
        xn2 = tl.load(xn_ptr + (B + rows[:, None]) * DP + dcol[None, :], mask=m, other=0.0)
    cw0 = tl.load(conv_w_ptr + ch)[None, :]  # (4, DI) weights, the oldest input's first
    cw1 = tl.load(conv_w_ptr + DI + ch)[None, :]
    cw2 = tl.load(conv_w_ptr + 2 * DI + ch)[None, :]
    cw3 = tl.load(conv_w_ptr + 3 * DI + ch)[None, :]
    conv_b = tl.load(conv_b_ptr + ch)[None, :]
    x = tl.dot(xn, w_x, input_precision=PRECISION)
    acc = conv_b + cw0 * w1 + cw1 * w2 + cw2 * w3 + cw3 * x
    at = rows[:, None] * DI + ch[None, :]
    tl.store(u_ptr + at, (acc * tl.sigmoid(acc)).to(u_ptr.dtype.element_ty), mask=m)
    s0, s1, s2, s3 = w1, w2, w3, x  # the window after this token
    # z after x is done with: fewer registers live at once (z first was no faster, 2026-11-29)
    w_z = tl.load(w_in_ptr + dcol[:, None] * 2 * DI + DI + ch[None, :], mask=d_ok, other=0.0)
    z = tl.dot(xn, w_z, input_precision=PRECISION)
    tl.store(gate_ptr + at, (z * tl.sigmoid(z)).to(gate_ptr.dtype.element_ty), mask=m)
    if T == 2:
        if tl.max(two.to(tl.int32)) > 0:  # in lockstep, all rows or none
            x2 = tl.dot(xn2, w_x, input_precision=PRECISION)
            acc = conv_b + cw0 * w2 + cw1 * w3 + cw2 * x + cw3 * x2  # the window moved on by 2
            tl.store(u_ptr + B * DI + at, (acc * tl.sigmoid(acc)).to(u_ptr.dtype.element_ty), mask=two[:, None])
            t = two[:, None]
            s0, s1, s2, s3 = tl.where(t, w2, s0), tl.where(t, w3, s1), tl.where(t, x, s2), tl.where(t, x2, s3)
            z = tl.dot(xn2, w_z, input_precision=PRECISION)
            tl.store(gate_ptr + B * DI + at, (z * tl.sigmoid(z)).to(gate_ptr.dtype.element_ty), mask=two[:, None])
    st = conv_ptr.dtype.element_ty
    tl.store(window, s0.to(st), mask=m)
    tl.store(window + DI, s1.to(st), mask=m)
    tl.store(window + 2 * DI, s2.to(st), mask=m)
    tl.store(window + 3 * DI, s3.to(st), mask=m)


@triton.jit
def _x_proj(u_ptr, w_x_ptr, dbc_ptr, n_feed_ptr, B, DI: tl.constexpr, S: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """x_proj(u) in one product: [Δ low rank | B | C | zero padding] (fp32), over the rows
    reading token program_id(1)."""
    rows, row_ok = _token_rows(n_feed_ptr, B, BLOCK_M)
    if tl.program_id(1) > 0:
        if tl.max(row_ok.to(tl.int32)) == 0:
            return
    s = tl.arange(0, S)
    dbc = tl.zeros((BLOCK_M, S), tl.float32)
    for k0 in range(0, DI, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        u = tl.load(u_ptr + rows[:, None] * DI + k[None, :], mask=row_ok[:, None], other=0.0)
        dbc += _mm(u, tl.load(w_x_ptr + k[:, None] * S + s[None, :]), PRECISION)
    tl.store(dbc_ptr + rows[:, None] * S + s[None, :], dbc, mask=row_ok[:, None])


@triton.jit
def _ssm_inputs(at, dbc_ptr, u_ptr, gate_ptr, w_dt_ptr, dt_b_ptr, ch, n, DI: tl.constexpr, N: tl.constexpr,
                R: tl.constexpr, RANK: tl.constexpr, S: tl.constexpr):
    """What the SSM step of token row `at` reads: Δ = softplus(dt_proj) (over Δ's rank, RANK of
    its R columns, not the padding), B, C, u and the gate."""
    dbc = dbc_ptr + at * S
    dt = tl.load(dt_b_ptr + ch)
    for k in tl.static_range(RANK):  # dt_proj of Δ's low rank, a column at a time (fewer registers than a tile)
        dt += tl.load(dbc + k) * tl.load(w_dt_ptr + k * DI + ch).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus, as torch's
    u = tl.load(u_ptr + at * DI + ch).to(tl.float32)
    return dt, tl.load(dbc + R + n), tl.load(dbc + R + N + n), u, tl.load(gate_ptr + at * DI + ch).to(tl.float32)


@triton.jit
def _exp2_half(x, ASM: tl.constexpr):
    """2^x of an fp16 tile: ex2.approx.f16x2 compiled (no fp32 round trip); through fp32 in
    Triton's interpreter, which cannot run PTX."""
    if ASM:
        return tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x], dtype=tl.float16, is_pure=True,
                                         pack=2)
    return tl.exp2(x.to(tl.float32)).to(tl.float16)


@triton.jit
def _ssm_update(h, dt, b, c, u, gate, a2_ptr, skip_ptr, y_ptr, at, ch, n, DI: tl.constexpr, N: tl.constexpr,
                HALF: tl.constexpr, ASM: tl.constexpr):
    """h = exp2(Δ A2) h + Δ B u (A2 = A log2(e), prepared once: one multiply less an element than
    exp(Δ A)); stores y = (C h + D u) gate of token row `at`; returns h. HALF: h, A2 and the
    update in fp16 (two values an instruction, half the registers of fp32), for an 8-bit state."""
    a2 = tl.load(a2_ptr + ch[:, None] * N + n[None, :])
    if HALF:
        dt_h, dtu_h, b_h, c_h = dt.to(tl.float16), (dt * u).to(tl.float16), b.to(tl.float16), c.to(tl.float16)
        h = h * _exp2_half(dt_h[:, None] * a2, ASM) + dtu_h[:, None] * b_h[None, :]
        y = tl.sum(h * c_h[None, :], axis=1).to(tl.float32)
    else:
        h = h * tl.exp2(dt[:, None] * a2) + (dt * u)[:, None] * b[None, :]
        y = tl.sum(h * c[None, :], axis=1)
    y = (y + tl.load(skip_ptr + ch) * u) * gate
    tl.store(y_ptr + at * DI + ch, y.to(y_ptr.dtype.element_ty))
    return h


@triton.jit
def _ssm(dbc_ptr, u_ptr, gate_ptr, w_dt_ptr, dt_b_ptr, a2_ptr, skip_ptr, ssm_ptr, y_ptr, n_feed_ptr, B,
         DI: tl.constexpr, N: tl.constexpr, R: tl.constexpr, RANK: tl.constexpr, S: tl.constexpr,
         T: tl.constexpr, BLOCK_C: tl.constexpr, HALF: tl.constexpr, ASM: tl.constexpr):
    """The SSM step for one row's block of channels, over the row's 1 or 2 tokens: the state is
    read and written once. The second token's inputs are loaded before its step is known to be
    needed, so that their latency overlaps the first token's work."""
    row = tl.program_id(0)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.arange(0, N)
    h_ptrs = ssm_ptr + (row * DI + ch[:, None]) * N + n[None, :]
    h = tl.load(h_ptrs).to(tl.float16 if HALF else tl.float32)  # (C, N)
    dt, b, c, u, gate = _ssm_inputs(row, dbc_ptr, u_ptr, gate_ptr, w_dt_ptr, dt_b_ptr, ch, n, DI, N, R, RANK, S)
    if T == 2:
        two = tl.load(n_feed_ptr + row) == 2
        dt2, b2, c2, u2, gate2 = _ssm_inputs(B + row, dbc_ptr, u_ptr, gate_ptr, w_dt_ptr, dt_b_ptr, ch, n, DI, N, R,
                                             RANK, S)
    h = _ssm_update(h, dt, b, c, u, gate, a2_ptr, skip_ptr, y_ptr, row, ch, n, DI, N, HALF, ASM)
    if T == 2:
        if two:
            h = _ssm_update(h, dt2, b2, c2, u2, gate2, a2_ptr, skip_ptr, y_ptr, B + row, ch, n, DI, N, HALF, ASM)
    if HALF and not ASM:  # Triton's interpreter rounds fp16 subnormals to fp8 wrongly (3.6), fp32 right
        h = h.to(tl.float32)
    tl.store(h_ptrs, h.to(ssm_ptr.dtype.element_ty))


@triton.jit
def _head(xn_ptr, head_ptr, logits_ptr, greedy_ptr, n_feed_ptr, B, V, D: tl.constexpr, DP: tl.constexpr,
          VP: tl.constexpr, T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
          STORE_LOGITS: tl.constexpr, PRECISION: tl.constexpr):
    """Logits of the final norm's xn (its gain folded into head) after a row's last token, and the
    greedy pick."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    dcol = tl.arange(0, DP)
    last = rows
    if T > 1:
        last += (tl.load(n_feed_ptr + rows, mask=row_ok, other=1) - 1) * B
    xn = tl.load(xn_ptr + last[:, None] * DP + dcol[None, :], mask=row_ok[:, None], other=0.0)
    _logits_greedy(xn, head_ptr, logits_ptr, greedy_ptr, rows, row_ok, dcol, dcol < D, V, VP, BLOCK_M, BLOCK_V,
                   STORE_LOGITS, PRECISION)


def split_error(config) -> str | None:
    """Why SplitStepKernel cannot run a Mamba of this config (None: it can)."""
    if config.d_conv != 4:
        return f"the split step needs d_conv 4, not {config.d_conv}"
    if config.d_inner % 16:
        return f"the split step needs d_inner a multiple of 16, not {config.d_inner}"
    if config.d_state < 16 or config.d_state & (config.d_state - 1):
        return f"the split step needs d_state a power of 2, at least 16, not {config.d_state}"
    return None


class SplitStepKernel:
    """`__call__(token, state) -> logits` with `policy.step`'s signature, `greedy(token, state,
    out)` (only the argmax ids written), and their pairs. Tiles: `block_m` rows a program in the
    matmul kernels (`num_warps` warps), `block_c` channels a program in `_in_conv`, `ssm_block_c`
    channels a program in `_ssm` (`ssm_warps` warps; by default 2 for a token a step, 4 for pairs,
    whose second token needs registers: the fastest of each on the H200, 2026-11-29). Its states
    come from `init_state` (the conv window laid out for it). Weights are copied when this is made."""

    def __init__(self, policy, block_m: int = 64, block_c: int = 32, num_warps: int = 8,
                 ssm_block_c: int | None = None, ssm_warps: int | None = None, ssm_math: str | None = None,
                 precision: str = "ieee", weight_dtype: str = "float32"):
        """The default tiles were the fastest on the H200 at 32,768 rows; `ssm_block_c` by default
        the largest power of 2 up to 256 that divides d_inner (256 for the shipped model);
        `ssm_math` the SSM update's dtype ("float16" or "float32"), by default fp16 for an 8-bit
        state (its 3 mantissa bits are far coarser than fp16's 10) and fp32 for any other.
        `precision`: of fp32 matmuls, "ieee" (exact) or "tf32"; `weight_dtype` "bfloat16" runs
        the matmuls in bf16 (the SSM arithmetic stays fp32 or fp16)."""
        c, bb = policy.config, policy.backbone
        if why := split_error(c):
            raise ValueError(why)
        if ssm_math not in (None, "float16", "float32"):
            raise ValueError(f"ssm_math ({ssm_math!r}) must be 'float16' or 'float32'")
        ssm_block_c = ssm_block_c or math.gcd(c.d_inner, 256)
        if c.d_inner % block_c or c.d_inner % ssm_block_c:
            raise ValueError(f"block_c ({block_c}) and ssm_block_c ({ssm_block_c}) must divide d_inner ({c.d_inner})")
        self.config, self.block_m, self.block_c, self.num_warps, self.precision = c, block_m, block_c, num_warps, precision
        self.ssm_block_c, self.ssm_warps = ssm_block_c, (ssm_warps or 2, ssm_warps or 4)  # for 1 and 2 tokens
        self.block_k = math.gcd(c.d_inner, 64)  # the reduction over channels, in chunks that divide it
        D, DI, N, R = c.d_model, c.d_inner, c.d_state, c.dt_rank
        self.R = max(16, triton.next_power_of_2(R))  # Δ's rank, zero-padded to a tl.dot size
        self.DP = triton.next_power_of_2(D)
        self.block_v = 64
        self.VP = triton.cdiv(c.vocab_size, self.block_v) * self.block_v
        weight_dtype = getattr(torch, weight_dtype)

        def stack(f, dtype=torch.float32):
            return torch.stack([f(layer.mixer, layer.norm) for layer in bb.layers]).detach().to(dtype).contiguous()

        def pad_rows(t: Tensor, rows: int) -> Tensor:
            return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])

        self.w_in = stack(lambda m, norm: (m.in_proj.weight * norm.weight).t(), weight_dtype)  # (L, D, 2 DI)
        self.conv_w = stack(lambda m, _: m.conv1d.weight[:, 0].t())  # (L, W, DI)
        self.conv_b = stack(lambda m, _: m.conv1d.bias)
        # x_proj as one matrix (L, DI, S): [Δ low rank (R, padded) | B (N) | C (N) | zeros], S a power of 2.
        self.S = triton.next_power_of_2(self.R + 2 * N)
        w_x = stack(lambda m, _: torch.cat([pad_rows(m.x_proj.weight[:R], self.R), m.x_proj.weight[R:]]).t())
        self.w_x = torch.cat([w_x, w_x.new_zeros(*w_x.shape[:2], self.S - w_x.shape[2])], dim=2).to(weight_dtype).contiguous()
        self.w_dt = stack(lambda m, _: pad_rows(m.dt_proj.weight.t(), self.R), weight_dtype)  # (L, R, DI)
        self.dt_b = stack(lambda m, _: m.dt_proj.bias)
        # exp(Δ A) as exp2(Δ A2), A2 = A log2(e): one multiply less an element
        self.A2 = stack(lambda m, _: -torch.exp(m.A_log.float())) * math.log2(math.e)  # (L, DI, N)
        self.ssm_math, self.A2_half = ssm_math, self.A2.half()
        self.skip = stack(lambda m, _: m.D)  # D, the skip term (L, DI)
        self.w_out = stack(lambda m, _: m.out_proj.weight.t(), weight_dtype)  # (L, DI, D)
        emb = bb.embedding.weight.detach().float()
        self.embedding = emb.contiguous()
        self.head = pad_rows(emb[: c.vocab_size] * bb.norm_f.weight.detach(), self.VP).t().to(weight_dtype).contiguous()  # (D, VP)
        self.eps = bb.norm_f.eps
        self.scratch = None  # made for the batch size and state dtype in use

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

    def _launch(self, token: Tensor, state, logits: Tensor | None, greedy: Tensor,
                n_feed: Tensor | None = None) -> None:
        """token (B,), or (T, B) with n_feed (B,): row b reads token[:n_feed[b], b] (T = 1 or 2)."""
        c = self.config
        T, B = (1, token.shape[0]) if token.dim() == 1 else token.shape
        if T > 2 or (T == 2) != (n_feed is not None):
            raise ValueError("token is (B,), or (2, B) with n_feed")
        if state.ssm.numel() >= 2**31 or state.conv.numel() >= 2**31:  # offsets are int32 in the kernels
            raise ValueError(f"a state of {state.ssm.numel():,} values is too large for int32 offsets: use fewer rows")
        D, DI, N, DP, S = c.d_model, c.d_inner, c.d_state, self.DP, self.S
        if state.conv.stride()[1:] != (4 * DI, 1, DI) or not state.ssm.is_contiguous():
            raise ValueError("SplitStepKernel reads the conv window input-major ((L, B, 4, d_inner) in memory): "
                             "make the state with SplitStepKernel.init_state")
        # Activations are token-major (row t B + b is row b's token t): any buffer of T B rows or
        # more serves, so steps of 1 and 2 tokens share one (a captured graph keeps its buffers).
        # u, the gate and y go through memory in the state's dtype, but not in 8 bits: an 8-bit
        # state is a storage format (rounded once a step, its error decays with the state), an
        # 8-bit u would round the layer's input itself.
        act = state.ssm.dtype if state.ssm.dtype.itemsize >= 2 else torch.bfloat16
        if self.scratch is None or self.scratch[0].shape[0] < T * B or self.scratch[3].dtype != act:
            dev, rows = token.device, T * B
            self.scratch = (torch.empty(rows, D, device=dev), torch.empty(rows, DP, device=dev, dtype=self.w_in.dtype),
                            torch.empty(rows, S, device=dev),
                            *(torch.empty(rows, DI, device=dev, dtype=act) for _ in range(3)))
        res, xn, dbc, u, gate, y = self.scratch  # xn in the weights' dtype, u, gate and y in the state's (or bf16)
        rows = triton.cdiv(B, self.block_m)
        mm = dict(BLOCK_M=self.block_m, PRECISION=self.precision, num_warps=self.num_warps)
        n_feed = token if n_feed is None else n_feed  # (not read when T is 1)
        half = (self.ssm_math or ("float16" if state.ssm.dtype.itemsize == 1 else "float32")) == "float16"
        ssm = dict(N=N, R=self.R, RANK=c.dt_rank, S=S, T=T, BLOCK_C=self.ssm_block_c, HALF=half, ASM=not INTERPRETED,
                   num_warps=self.ssm_warps[T - 1])
        for i in range(c.n_layer + 1):
            _out_norm[(rows, T)](y, self.w_out[i - 1], token, self.embedding, res, xn, n_feed, B, self.eps, D=D,
                                 DP=DP, DI=DI, FIRST=i == 0, BLOCK_K=self.block_k, **mm)
            if i == c.n_layer:
                break
            _in_conv[(rows, DI // self.block_c)](xn, self.w_in[i], self.conv_w[i], self.conv_b[i], state.conv[i], u,
                                                 gate, n_feed, B, D=D, DP=DP, DI=DI, T=T, BLOCK_C=self.block_c, **mm)
            _x_proj[(rows, T)](u, self.w_x[i], dbc, n_feed, B, DI=DI, S=S, BLOCK_K=self.block_k, **mm)
            _ssm[(B, DI // self.ssm_block_c)](
                dbc, u, gate, self.w_dt[i], self.dt_b[i], (self.A2_half if half else self.A2)[i], self.skip[i],
                state.ssm[i], y, n_feed, B, DI=DI, **ssm)
        _head[(rows,)](xn, self.head, greedy if logits is None else logits, greedy, n_feed, B, c.vocab_size, D=D,
                       DP=DP, VP=self.VP, T=T, BLOCK_V=self.block_v, STORE_LOGITS=logits is not None, **mm)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> MambaState:
        """A zero state for this kernel, in `dtype` (float32, bfloat16 or float8_e4m3fn). The conv
        window is the policy's (L, B, d_inner, 4), laid out input-major in memory ((L, B, 4,
        d_inner)): each of a row's last 4 inputs is then one contiguous tile for `_in_conv`."""
        c, device = self.config, device or self.w_in.device
        conv = torch.zeros(c.n_layer, batch_size, c.d_conv, c.d_inner, device=device, dtype=dtype).transpose(2, 3)
        return MambaState(conv, torch.zeros(c.n_layer, batch_size, c.d_inner, c.d_state, device=device, dtype=dtype))

    @torch.no_grad()
    def step_pair(self, feed: Tensor, n_feed: Tensor, state) -> Tensor:
        """Logits (B, V) after row b reads feed[:n_feed[b], b]; feed (2, B), n_feed (B,) int32."""
        logits = torch.empty(feed.shape[1], self.config.vocab_size, device=feed.device, dtype=torch.float32)
        self._launch(feed, state, logits, torch.empty(feed.shape[1], dtype=torch.int32, device=feed.device), n_feed)
        return logits

    @torch.no_grad()
    def greedy_pair(self, feed: Tensor, n_feed: Tensor, state, out: Tensor) -> Tensor:
        """out (B,) int32: the argmax ids after row b reads feed[:n_feed[b], b]."""
        self._launch(feed, state, None, out, n_feed)
        return out
