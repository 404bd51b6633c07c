"""Mamba-1's selective scan without mamba-ssm: the sequential reference, a fused CPU kernel, and a
chunked PyTorch scan; `fast_selective_scan` picks the fused kernel for CPU tensors where it
builds, else the chunked scan. The CUDA kernels stay in mamba.py.

Δ_t = softplus(dt_t + dt_bias);  h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t;  y_t = C_t h_t + D u_t;
out_t = y_t * silu(z_t). Shapes are time-major, as the projections make them: (B, L, channels).

- `selective_scan`: the recurrence one time step at a time, the reference the others are tested
  against. Its backward holds every step's (B, d_inner, N) state: gigabytes at batch 32.
- `cpu_selective_scan`: scan_cpu.c, built once with the machine's C compiler (`cpu_kernel`).
  Each thread takes rows; each (row, 16 channels) keeps its N x 16 state in registers and reads
  its inputs once. The forward keeps the state every 32 steps; the backward recomputes the 32
  steps in between and runs the adjoint λ_t = dL/dh_t = C_t dy_t + exp(Δ_{t+1} A) λ_{t+1} back.
  `causal_conv_silu` fuses the convolution before it the same way.
- `chunked_selective_scan`: PyTorch ops with no loop over time steps and no (B, L, d_inner, N)
  tensor: rows and time are cut into blocks of at most `block_elements` state values; inside a
  block the time axis is folded into K chunks of T ~ sqrt(length) steps, the recurrence runs over
  the T positions of all K chunks at once, then over the K chunks, and each chunk adds its
  carried-in state times the running product of its decays. Every factor is a product of decays
  exp(Δ A) <= 1 (Δ >= 0, A < 0): nothing overflows, and an underflow to 0 is the true value to
  within 1e-38. Its backward keeps each block's starting state and recomputes the block.
"""

import ctypes
import functools
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


def selective_scan(
    u: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The selective SSM as a sequential recurrence over time: the reference.

    u, dt, z (B, L, d_inner); dt_bias, D (d_inner,); A (d_inner, N); B, C (B, L, N); h0 (B, d_inner,
    N) or None for zeros. Returns out (B, L, d_inner) and h_L (B, d_inner, N), both fp32.
    """
    u, delta = u.float(), F.softplus(dt.float() + dt_bias.float())  # Δ
    # Time first, split with unbind: its backward stacks the L gradients once, where indexing
    # [t] would allocate and add a full (L, ...) gradient for every t.
    deltaA = torch.exp(delta.transpose(0, 1)[..., None] * A)  # (L, B, d_inner, N)
    B = B.float().transpose(0, 1)[:, :, None]  # (L, B, 1, N)
    deltaB_u = (delta * u).transpose(0, 1)[..., None] * B  # (L, B, d_inner, N)
    C = C.float().transpose(0, 1)[..., None]  # (L, B, N, 1)
    h = deltaA.new_zeros(deltaA.shape[1:]) if h0 is None else h0.float()  # (B, d_inner, N)
    ys = []
    for deltaA_t, deltaB_u_t, C_t in zip(deltaA.unbind(0), deltaB_u.unbind(0), C.unbind(0)):
        h = torch.addcmul(deltaB_u_t, deltaA_t, h)  # (B, d_inner, N)
        ys.append(h @ C_t)  # (B, d_inner, 1)
    y = torch.stack(ys, dim=1)[..., 0] + D * u  # (B, L, d_inner)
    return y * F.silu(z.float()), h


def chunked_selective_scan(
    u: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    h0: Tensor | None = None, block_elements: int = 2**22,
) -> tuple[Tensor, Tensor]:
    """`selective_scan`'s arguments and results, computed in blocks of at most `block_elements`
    state values (rows x steps x d_inner x N; one row's steps are split if they exceed it)."""
    u, B, C = (x.float() for x in (u, B, C))
    delta = F.softplus(dt.float() + dt_bias.float())  # Δ (B, L, d_inner)
    y, h = _ChunkedScan.apply(u, delta, A.float(), B, C, h0, block_elements)  # (B, L, d_inner), (B, d_inner, N)
    return torch.addcmul(y, u, D.float()) * F.silu(z.float()), h  # (C h + D u) silu(z)


def _blocks(rows: int, L: int, state: int, block_elements: int) -> list[tuple[slice, list[slice]]]:
    """Row blocks, each with its time segments, of at most block_elements state values."""
    steps = max(1, block_elements // state)  # row-steps a block holds
    per_block = max(1, min(rows, steps // L))
    seg = min(L, steps)
    return [
        (slice(r, min(r + per_block, rows)), [slice(t, min(t + seg, L)) for t in range(0, L, seg)])
        for r in range(0, rows, per_block)
    ]


def _decays_and_inputs(delta: Tensor, u: Tensor, A: Tensor, B: Tensor, T: int, a: Tensor, b: Tensor) -> int:
    """Fill a = exp(Δ A), b = Δ u B (R, Lp, d_inner, N), the time axis padded to Lp, a multiple
    of T, with a = 1, b = 0 (steps that change nothing); a and b are flat buffers. Returns Lp."""
    R, L, d = delta.shape
    Lp = -(-L // T) * T
    a, b = (x[: R * Lp * d * A.shape[1]].view(R, Lp, d, A.shape[1]) for x in (a, b))
    torch.mul(delta[..., None], A, out=a[:, :L]).exp_()
    torch.mul((delta * u)[..., None], B[:, :, None], out=b[:, :L])
    a[:, L:], b[:, L:] = 1, 0
    return Lp


def _scan_(a: Tensor, b: Tensor, T: int, P: Tensor, reverse: bool = False) -> None:
    """In place along dim 1 of (R, K*T, ...): b_t <- a_t b_{t-1} + b_t, from b_{-1} = 0; with
    reverse, b_t <- a_{t+1} b_{t+1} + b_t, from b_{K*T} = 0. Python loops of T and K steps;
    P: a buffer of a's size."""
    R, Lp = a.shape[:2]
    K = Lp // T
    a, b, P = (x.view(R, K, T, *a.shape[2:]) for x in (a, b, P))  # (R, K, T, ...)
    # 1. Within each chunk from a zero state, all chunks at once; P: the product of the decays
    #    from the chunk's edge to each step, what a state carried in is multiplied by.
    if reverse:
        P[:, :, T - 1] = 1
    else:
        P[:, :, 0] = a[:, :, 0]
    for j in range(T - 2, -1, -1) if reverse else range(1, T):
        src = j + 1 if reverse else j - 1  # the neighbouring step whose state flows into j
        coef = a[:, :, j + 1] if reverse else a[:, :, j]  # the decay between them
        b[:, :, j].addcmul_(coef, b[:, :, src])
        torch.mul(P[:, :, src], coef, out=P[:, :, j])
    # 2. The states carried across chunk edges, one chunk after another.
    carried = torch.zeros_like(b[:, :, 0])  # (R, K, ...): the state entering each chunk
    for k in range(K - 2, -1, -1) if reverse else range(1, K):
        prev = k + 1 if reverse else k - 1
        edge = 0 if reverse else T - 1  # the step of chunk prev next to chunk k
        into = torch.addcmul(b[:, prev, edge], P[:, prev, edge], carried[:, prev])
        carried[:, k] = a[:, prev, 0] * into if reverse else into
    # 3. Each step adds its chunk's carried-in state, decayed.
    b.addcmul_(P, carried[:, :, None])


class _ChunkedScan(torch.autograd.Function):
    """y = C h (B, L, d_inner) and h_L from u, Δ (B, L, d_inner), A (d_inner, N), B, C (B, L, N),
    h0 (B, d_inner, N) or None."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, block_elements):
        rows, L, d = u.shape
        N = A.shape[1]
        y = u.new_empty(rows, L, d)
        h_last = u.new_empty(rows, d, N)
        blocks = _blocks(rows, L, d * N, block_elements)
        a, b, P = _buffers(blocks, d, N, u, 3)
        starts = []  # each segment's starting state, for the backward
        for r, segments in blocks:
            h = None if h0 is None else h0[r].float()
            for t in segments:
                starts.append(h)
                n = t.stop - t.start
                T = _chunk_length(n)
                Lp = _decays_and_inputs(delta[r, t], u[r, t], A, B[r, t], T, a, b)
                at, bt, Pt = _views((a, b, P), r, rows, Lp, d, N)
                if h is not None:
                    bt[:, 0].addcmul_(at[:, 0], h)
                _scan_(at, bt, T, Pt)
                y[r, t] = (bt[:, :n] @ C[r, t, :, None])[..., 0]  # C_t h_t
                h = bt[:, n - 1].clone()
            h_last[r] = h
        ctx.save_for_backward(u, delta, A, B, C)
        ctx.starts, ctx.blocks, ctx.has_h0 = starts, blocks, h0 is not None
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C = ctx.saved_tensors
        rows, L, d = u.shape
        N = A.shape[1]
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        dh0 = u.new_empty(rows, d, N) if ctx.has_h0 else None
        dy = dy.contiguous()
        buffers = _buffers(ctx.blocks, d, N, u, 4)
        starts = iter(reversed(ctx.starts))
        for r, segments in reversed(ctx.blocks):
            carry = dh_last[r].clone()  # dL/dh at the segment's end
            for t in reversed(segments):
                h_start = next(starts)
                n = t.stop - t.start
                T = _chunk_length(n)
                Δ, uu, BB, CC, gy = delta[r, t], u[r, t], B[r, t], C[r, t], dy[r, t]
                Lp = _decays_and_inputs(Δ, uu, A, BB, T, buffers[0], buffers[1])
                a, h, lam, P = _views(buffers, r, rows, Lp, d, N)
                if h_start is not None:
                    h[:, 0].addcmul_(a[:, 0], h_start)
                _scan_(a, h, T, P)  # h_t
                torch.mul(gy[..., None], CC[:, :, None], out=lam[:, :n])  # C_t dy_t
                lam[:, n:] = 0
                lam[:, n - 1] += carry
                _scan_(a, lam, T, P, reverse=True)  # λ_t = dL/dh_t
                lam, a, h, P = lam[:, :n], a[:, :n], h[:, :n], P[:, :n]
                # dL/dC_t = dy_t . h_t; dL/d(Δ u)_t = λ_t B_t; dL/dB_t = (Δ u)_t . λ_t
                dC[r, t] = (gy[:, :, None, :] @ h)[:, :, 0]
                dBu = (lam @ BB[..., None])[..., 0]  # (R, n, d)
                dB[r, t] = ((Δ * uu)[:, :, None, :] @ lam)[:, :, 0]
                # dL/d(ΔA)_t = λ_t a_t h_{t-1}
                carry = a[:, 0] * lam[:, 0]  # dL/dh_{t-1} at the segment's start
                q = lam.mul_(a)
                q[:, 1:] *= h[:, :-1]
                if h_start is None:
                    q[:, 0] = 0
                else:
                    q[:, 0] *= h_start
                dA += torch.mul(q, Δ[..., None], out=P).sum((0, 1))
                ddelta[r, t] = torch.addcmul(torch.mul(q, A, out=P).sum(-1), dBu, uu)
                du[r, t] = dBu * Δ
            if dh0 is not None:
                dh0[r] = carry
        return du, ddelta, dA, dB, dC, dh0, None


def _buffers(blocks, d: int, N: int, like: Tensor, count: int) -> list[Tensor]:
    """`count` flat buffers, each as large as the largest padded block."""
    size = max((r.stop - r.start) * -(-(t.stop - t.start) // _chunk_length(t.stop - t.start)) * _chunk_length(t.stop - t.start)
               for r, segments in blocks for t in segments) * d * N
    return [like.new_empty(size) for _ in range(count)]


def _views(buffers, r: slice, rows: int, Lp: int, d: int, N: int) -> list[Tensor]:
    R = min(r.stop, rows) - r.start
    return [x[: R * Lp * d * N].view(R, Lp, d, N) for x in buffers]


def _chunk_length(L: int) -> int:
    """T ~ sqrt(L): the loops within and across chunks then take about as many steps each."""
    return max(1, math.isqrt(L - 1) + 1) if L > 1 else 1


def fast_selective_scan(
    u: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """`selective_scan`, fast: the fused kernel for CPU tensors where it builds, else the chunked
    PyTorch scan."""
    scan = cpu_selective_scan if not u.is_cuda and cpu_kernel() is not None else chunked_selective_scan
    return scan(u, dt, dt_bias, A, B, C, D, z, h0)


def cpu_selective_scan(
    u: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """`selective_scan` on CPU tensors through the fused kernel of scan_cpu.c (see `cpu_kernel`)."""
    u, dt, B, C, z = (x.float().contiguous() for x in (u, dt, B, C, z))
    return _CPUScan.apply(u, dt, dt_bias.float(), A.float(), B, C, D.float(), z, h0)


_SEGMENT = 32
"""Steps between the states that the forward keeps for the backward, which recomputes the
steps in between: (B, L / 32, d_inner, N) floats kept, 2 x 32 x N x 16 floats of work space."""


@functools.cache
def cpu_kernel() -> ctypes.CDLL | None:
    """scan_cpu.c built once with the machine's C compiler (`$CC`, else cc, gcc or clang), kept
    under ~/.cache/mamba-agent by a hash of the source; None if there is none or it fails
    (then the chunked PyTorch scan runs)."""
    source = Path(__file__).with_name("scan_cpu.c")
    flags = ["-O3", "-march=native", "-ffast-math", "-shared", "-fPIC"]
    digest = hashlib.sha256(source.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mamba-agent"
    library = cache / f"scan_cpu-{digest}.so"
    compiler = os.environ.get("CC") or next(filter(shutil.which, ("cc", "gcc", "clang")), None)
    try:
        if not library.exists():
            if compiler is None:
                raise RuntimeError("no C compiler (set CC, or install gcc or clang)")
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, then moved: atomic
                built = Path(tmp) / library.name
                subprocess.run([compiler, *flags, str(source), "-o", str(built), "-lm"],
                               check=True, capture_output=True, text=True, timeout=120)
                os.replace(built, library)
        kernel = ctypes.CDLL(str(library))
    except Exception as e:  # compiler missing or failing: the PyTorch scan is exact too, only slower
        detail = getattr(e, "stderr", "") or e
        log.warning("the fused CPU scan is unavailable (%s); Mamba trains with the chunked PyTorch scan", detail)
        return None
    long, ptr = ctypes.c_long, ctypes.c_void_p
    kernel.scan_forward.argtypes = [long] * 8 + [ptr] * 11
    kernel.scan_backward.argtypes = [long] * 6 + [ptr] * 19
    kernel.conv_forward.argtypes = [long] * 5 + [ptr] * 6
    kernel.conv_backward.argtypes = [long] * 5 + [ptr] * 8
    for fn in (kernel.scan_forward, kernel.scan_backward, kernel.conv_forward, kernel.conv_backward):
        fn.restype = None
    return kernel


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="mamba-scan")


def _parts(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _in_threads(calls: list) -> None:
    """Run the kernel calls at once, one a thread (ctypes releases the GIL while C runs)."""
    if len(calls) == 1:
        calls[0]()
    else:
        for f in [_pool(len(calls)).submit(c) for c in calls]:
            f.result()


def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


class _CPUScan(torch.autograd.Function):
    """out = (C h + D u) silu(z) (B, L, d_inner) and h_L (B, d_inner, N) from contiguous fp32 u,
    dt, z (B, L, d_inner), dt_bias, D (d_inner,), A (d_inner, N), B, C (B, L, N), h0 or None."""

    @staticmethod
    def forward(ctx, u, dt, dt_bias, A, B, C, D, z, h0):
        kernel, threads = cpu_kernel(), torch.get_num_threads()
        rows, L, d = u.shape
        N = A.shape[1]
        AT = A.t().contiguous()  # (N, d_inner)
        h = u.new_zeros(rows, d, N) if h0 is None else h0.float().clone()
        y = u.new_empty(rows, L, d)
        keep = torch.is_grad_enabled() or any(ctx.needs_input_grad)
        starts = u.new_empty(rows, -(-L // _SEGMENT), d, N) if keep else None
        dims = (L, d, N, _SEGMENT)
        pointers = [_ptr(x) for x in (u, dt, dt_bias, AT, B, C, D, z, h, y, starts)]
        if rows >= threads:  # rows apart; or, for a few rows, groups of 16 channels apart
            parts = [(r0, r1, 0, d) for r0, r1 in _parts(rows, threads)]
        else:
            parts = [(0, rows, 16 * c0, min(d, 16 * c1)) for c0, c1 in _parts(-(-d // 16), threads)]
        _in_threads([functools.partial(kernel.scan_forward, *p, *dims, *pointers) for p in parts])
        ctx.save_for_backward(u, dt, dt_bias, AT, B, C, D, z, starts)
        ctx.has_h0 = h0 is not None
        return y, h

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, dt, dt_bias, AT, B, C, D, z, starts = ctx.saved_tensors
        kernel = cpu_kernel()
        rows, L, d = u.shape
        N = AT.shape[0]
        dy, lam = dy.float().contiguous(), dh_last.float().clone()  # lam: dL/dh_L in, dL/dh0 out
        du, ddt, dz = torch.empty_like(u), torch.empty_like(dt), torch.empty_like(z)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        parts = _parts(rows, min(rows, torch.get_num_threads()))  # rows apart: dB, dC sum over channels
        dAT, dD, ddt_bias = u.new_zeros(len(parts), N, d), u.new_zeros(len(parts), d), u.new_zeros(len(parts), d)
        pointers = [_ptr(x) for x in (u, dt, dt_bias, AT, B, C, D, z, starts, dy, lam, du, ddt, dz)]
        _in_threads([
            functools.partial(kernel.scan_backward, r0, r1, L, d, N, _SEGMENT, *pointers, _ptr(dAT[i]), _ptr(dB), _ptr(dC),
                              _ptr(dD[i]), _ptr(ddt_bias[i]))
            for i, (r0, r1) in enumerate(parts)  # one accumulator a thread for the sums over rows
        ])
        return du, ddt, ddt_bias.sum(0), dAT.sum(0).t(), dB, dC, dD.sum(0), dz, lam if ctx.has_h0 else None


def causal_conv_silu(x: Tensor, history: Tensor | None, weight: Tensor, bias: Tensor) -> Tensor:
    """silu(causal depthwise conv): x (B, L, d_inner) after history (B, W-1, d_inner) or zeros,
    weight (d_inner, W), oldest input first -> (B, L, d_inner); fused on the CPU where the kernel
    builds, else W shifted multiply-adds."""
    if not x.is_cuda and cpu_kernel() is not None:
        x, weight, bias = x.float().contiguous(), weight.float(), bias.float()
        return _CPUConvSilu.apply(x, None if history is None else history.float().contiguous(), weight, bias)
    W, L = weight.shape[1], x.shape[1]
    if history is None:
        history = x.new_zeros(x.shape[0], W - 1, x.shape[2])
    x = torch.cat([history.to(x.dtype), x], dim=1)  # (B, W-1+L, d_inner)
    out = torch.addcmul(bias, x[:, :L], weight[:, 0])
    for k in range(1, W):
        out = torch.addcmul(out, x[:, k : k + L], weight[:, k])
    return F.silu(out)


class _CPUConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, history, weight, bias):
        kernel = cpu_kernel()
        rows, L, d = x.shape
        W = weight.shape[1]
        wT = weight.t().contiguous()  # (W, d_inner)
        out = torch.empty_like(x)
        pre = torch.empty_like(x) if torch.is_grad_enabled() or any(ctx.needs_input_grad) else None
        pointers = [_ptr(t) for t in (x, history, wT, bias, pre, out)]
        _in_threads([functools.partial(kernel.conv_forward, r0, r1, L, d, W, *pointers)
                     for r0, r1 in _parts(rows, min(rows, torch.get_num_threads()))])
        ctx.save_for_backward(x, history, wT, pre)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, history, wT, pre = ctx.saved_tensors
        kernel = cpu_kernel()
        rows, L, d = x.shape
        W = wT.shape[0]
        dout, dx = dout.float().contiguous(), torch.zeros_like(x)
        parts = _parts(rows, min(rows, torch.get_num_threads()))
        dwT, dbias = x.new_zeros(len(parts), W, d), x.new_zeros(len(parts), d)  # one accumulator a thread
        pointers = [_ptr(t) for t in (x, history, wT, pre, dout, dx)]
        _in_threads([functools.partial(kernel.conv_backward, r0, r1, L, d, W, *pointers, _ptr(dwT[i]), _ptr(dbias[i]))
                     for i, (r0, r1) in enumerate(parts)])
        return dx, None, dwT.sum(0).t(), dbias.sum(0)
