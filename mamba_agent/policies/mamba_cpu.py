"""Mamba's decode step on the CPU in NumPy: the `numpy` stepper (mamba_agent/steppers.py),
for Mamba-1 (`NumpyStepper`) and Mamba-2 (`Numpy2Stepper`)."""

import numpy as np
import threadpoolctl
import torch
from torch import Tensor

from mamba_agent.policies.mamba import MambaPolicy
from mamba_agent.policies.mamba2 import Mamba2Policy
from mamba_agent.steppers import Stepper


def _weight(t: Tensor) -> np.ndarray:
    """(out, in) -> (in, out): x @ W.T as x @ weight."""
    return t.detach().float().t().contiguous().numpy()


class _RingStepper(Stepper):
    """What both Mambas' NumPy steps share: weights prepared once, every buffer allocated once.

    At batch 1 the step is ~0.7M multiply-adds, tens of microseconds of arithmetic; PyTorch's
    2-10 us per operation (dispatch, allocation) made it 1.2 ms, NumPy with `out=` into fixed
    buffers costs ~1 us. It works on NumPy views of the policy's state tensors, so `prefill`
    (PyTorch) and `step` continue each other's state. Folded once into the weights, to save
    operations per token: each RMSNorm gain into the matrix after it (W (g x) = (W diag g) x).
    The conv state is a ring: a step writes its input over the oldest one and the conv uses the
    weights rotated to match (two strided copies a layer fewer); `prefill` first puts the ring
    back in PyTorch's order. A subclass prepares `self.layers` and runs them in `_layers`.
    """

    name = "numpy"

    def __init__(self, policy, batch_size: int):
        super().__init__(policy, batch_size, "cpu")
        c, B, f32 = policy.config, batch_size, np.float32
        # NumPy's BLAS would start its own threads for these small products, which only contend
        # with each other (at batch 1 it cost a third of the step): use as many as torch does.
        threadpoolctl.threadpool_limits(torch.get_num_threads(), user_api="blas")
        d = c.d_model
        self.eps_d = 1e-5 * d
        # The ring slot of the newest input; at W - 1 the ring is in PyTorch's order.
        self.d_conv, self.slot = c.d_conv, c.d_conv - 1
        self.conv_states = list(self.state.conv.numpy())  # (B, channels, W) a layer: views of the state
        # The norm divides by sqrt(sum x^2 + d eps), sqrt(d) times RMSNorm's divisor: folded here.
        self.gain = d**0.5
        emb = policy.backbone.embedding.weight.detach().float()
        self.embedding = emb.numpy()  # (V_padded, d)
        self.head = _weight(emb[: c.vocab_size] * policy.backbone.norm_f.weight * self.gain)  # (d, V)
        self.residual, self.mixed = np.zeros((B, d), f32), np.zeros((B, d), f32)
        self.scale = np.zeros((B, 1), f32)
        self.logits_out = np.zeros((B, c.vocab_size), f32)
        self.ids = torch.zeros(B, dtype=torch.long)  # greedy's answer, a tensor over NumPy's buffer
        self.ids_out = self.ids.numpy()
        self.feed, self.feed_in = None, None  # the last feed tensor and its NumPy view (the runtime keeps one)

    def ring_weights(self, w: np.ndarray) -> list[np.ndarray]:
        """w (channels, W), oldest input first -> for each slot p of the newest input, the
        weights in ring order: slot s holds the input (p - s) mod W steps old."""
        W = self.d_conv
        return [np.ascontiguousarray(w[:, [W - 1 - (p - s) % W for s in range(W)]]) for p in range(W)]

    def _norm_scale(self, x: np.ndarray) -> np.ndarray:
        """(B, 1): sqrt(sum(x^2) + d eps), the RMSNorm divisor times sqrt(d)."""
        np.vecdot(x, x, self.scale[:, 0])
        np.add(self.scale, self.eps_d, self.scale)
        return np.sqrt(self.scale, self.scale)

    def logits(self, feed: Tensor, n_feed: Tensor | None = None) -> Tensor:
        self._unnormed_logits(feed)
        np.divide(self.logits_out, self._norm_scale(self.residual), self.logits_out)
        return torch.from_numpy(self.logits_out)

    def greedy(self, feed: Tensor, n_feed: Tensor | None = None) -> Tensor:
        # The final norm scales each row's logits by a positive number: the argmax is the same without it.
        self._unnormed_logits(feed).argmax(-1, out=self.ids_out)
        return self.ids

    def _unnormed_logits(self, feed: Tensor) -> np.ndarray:
        """The layers, then head(residual): the logits times the final norm's divisor."""
        slot = self.slot = (self.slot + 1) % self.d_conv  # over the oldest input
        if feed is not self.feed:
            self.feed, self.feed_in = feed, feed.numpy()
        self.embedding.take(self.feed_in, 0, self.residual)  # a method, not np.take: no dispatch
        self._layers(slot)
        return np.matmul(self.residual, self.head, self.logits_out)

    def prefill(self, tokens: Tensor) -> Tensor:
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


class NumpyStepper(_RingStepper):
    """Mamba-1's step. Also folded: the Δ bias as an extra input column that is always 1."""

    def __init__(self, policy: MambaPolicy, batch_size: int):
        super().__init__(policy, batch_size)
        c, B, f32 = policy.config, batch_size, np.float32
        di, N, R = c.d_inner, c.d_state, c.dt_rank

        def with_bias(w: Tensor, b: Tensor) -> np.ndarray:  # (out, in), (out,) -> (in + 1, out)
            return _weight(torch.cat([w.detach(), b.detach()[:, None]], dim=1))

        # silu(v) = h + h tanh(h) with h = v / 2 (3 operations, not 4): the 1/2 is folded into
        # the conv (whose input, x, stays unscaled in the state) and into z's rows of in_proj.
        half_z = torch.cat([torch.ones(di), torch.full((di,), 0.5)])[:, None]
        self.layers = []
        for layer, conv, ssm in zip(policy.backbone.layers, self.state.conv.numpy(), self.state.ssm.numpy()):
            m = layer.mixer
            x_w = m.x_proj.weight.detach()  # rows [dt (R) | B (N) | C (N)], reordered [B | C | dt]
            self.layers.append((
                _weight(m.in_proj.weight * layer.norm.weight * self.gain * half_z),  # (d, 2 di)
                self.ring_weights(m.conv1d.weight[:, 0].detach().float().numpy() / 2),  # W x (di, W)
                m.conv1d.bias.detach().float().numpy() / 2,
                _weight(torch.cat([x_w[R:], x_w[:R]])),  # (di, 2N + R)
                with_bias(m.dt_proj.weight, m.dt_proj.bias),  # (R + 1, di)
                (-torch.exp(m.A_log.detach().float())).numpy(),  # A (di, N)
                m.D.detach().float().numpy(),  # (di,)
                _weight(m.out_proj.weight),  # (di, d)
                conv,  # (B, di, W): view of the state
                [conv[..., slot] for slot in range(c.d_conv)],  # its slots, where a step writes its input
                ssm,  # (B, di, N): view of the state
            ))
        self.xz, self.tmp_xz = np.zeros((B, 2 * di), f32), np.zeros((B, 2 * di), f32)  # [x | z / 2]; x becomes the conv's output / 2
        self.dbc = np.ones((B, 2 * N + R + 1), f32)  # [B | C | dt (low rank) | 1]
        self.delta, self.y, self.tmp = (np.zeros((B, di), f32) for _ in range(3))
        self.dA, self.dBx = np.zeros((B, di, N), f32), np.zeros((B, di, N), f32)
        # Views into those buffers, made once: the step only fills them.
        xz, dbc = self.xz, self.dbc
        self.views = (
            xz[:, :di], xz[:, di:],  # x, z
            dbc[:, :-1], dbc[:, None, :N], dbc[:, N : 2 * N, None], dbc[:, 2 * N :],  # x_proj out, B, C, dt + 1
            self.delta[:, :, None], self.y[:, :, None],
        )

    def _layers(self, slot: int) -> None:
        # ufuncs as locals and outputs passed by position: ~0.15 us less a call, ~125 calls a step.
        mul, add, div, exp, tanh, matmul = np.multiply, np.add, np.divide, np.exp, np.tanh, np.matmul
        res, xz, tmp_xz, delta, y, tmp, dA, dBx, mixed = (
            self.residual, self.xz, self.tmp_xz, self.delta, self.y, self.tmp, self.dA, self.dBx, self.mixed,
        )
        x, z, x_proj_out, B, C, dt, delta_col, y_col = self.views
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


class Numpy2Stepper(_RingStepper):
    """Mamba-2's step. Also folded: the gated norm's gain and sqrt(group size) into out_proj."""

    def __init__(self, policy: Mamba2Policy, batch_size: int):
        super().__init__(policy, batch_size)
        c, B, f32 = policy.config, batch_size, np.float32
        di, cd, H, P, N, G = c.d_inner, c.conv_dim, c.nheads, c.headdim, c.d_state, c.ngroups
        R, gs = H // G, di // G
        self.eps_group = 1e-5 * gs
        # silu(v) = h + h tanh(h) with h = v / 2: the 1/2 folded into the conv (whose input stays
        # unscaled in the state) and into z's rows of in_proj. Rows: [z | x B C | dt].
        half_z = torch.cat([torch.full((di,), 0.5), torch.ones(cd + H)])[:, None]
        self.layers = []
        for layer, conv, ssm in zip(policy.backbone.layers, self.state.conv.numpy(), self.state.ssm.numpy()):
            m = layer.mixer
            self.layers.append((
                _weight(m.in_proj.weight * layer.norm.weight * self.gain * half_z),  # (d, di + cd + H)
                self.ring_weights(m.conv1d.weight[:, 0].detach().float().numpy() / 2),  # W x (cd, W)
                m.conv1d.bias.detach().float().numpy() / 2,
                m.dt_bias.detach().float().numpy(),  # (H,)
                (-torch.exp(m.A_log.detach().float())).numpy(),  # A (H,)
                m.D.detach().float().numpy()[:, None],  # (H, 1)
                _weight(m.out_proj.weight * m.norm.weight * gs**0.5),  # (di, d)
                conv,  # (B, cd, W): view of the state
                [conv[..., slot] for slot in range(c.d_conv)],  # its slots, where a step writes its input
                ssm.reshape(B, G, R, P, N),  # view of the state
            ))
            assert np.shares_memory(self.layers[-1][-1], ssm)
        self.zxd = np.zeros((B, di + cd + H), f32)  # [z / 2 | x B C | dt]; x B C become the conv's output / 2
        self.tmp_zx = np.zeros((B, di + cd), f32)
        self.delta, self.tmp_h = np.zeros((B, H), f32), np.zeros((B, H), f32)
        self.delta_x, self.tmp_x, self.y = (np.zeros((B, H, P), f32) for _ in range(3))
        self.dBx = np.zeros((B, G, R, P, N), f32)
        self.group_scale = np.zeros((B, G), f32)
        # Views into those buffers, made once: the step only fills them.
        zxd, y = self.zxd, self.y
        xBC = zxd[:, di : di + cd]
        self.views = (
            zxd[:, : di + cd], zxd[:, :di].reshape(B, H, P), xBC,  # z and x B C (silu'd together), z by head
            xBC[:, :di].reshape(B, H, P), xBC[:, di : di + G * N].reshape(B, G, 1, 1, N),  # x, B
            xBC[:, di + G * N :].reshape(B, G, 1, N, 1), zxd[:, di + cd :],  # C, dt
            self.delta.reshape(B, G, R, 1, 1), self.delta[:, :, None], self.delta_x.reshape(B, G, R, P, 1),
            y.reshape(B, G, R, P, 1), y.reshape(B, G, gs), y.reshape(B, di), self.group_scale[..., None],
        )
        for view in self.views:
            assert view.base is not None  # each one a view: the step fills the buffers through them

    def _layers(self, slot: int) -> None:
        mul, add, div, exp, tanh, matmul = np.multiply, np.add, np.divide, np.exp, np.tanh, np.matmul
        res, zxd, tmp_zx, delta, tmp_h, delta_x, tmp_x, y, dBx, mixed, group_scale = (
            self.residual, self.zxd, self.tmp_zx, self.delta, self.tmp_h, self.delta_x, self.tmp_x, self.y,
            self.dBx, self.mixed, self.group_scale,
        )
        zx, z, xBC, x, B, C, dt, delta_heads, delta_col, delta_x_groups, y_groups, y_norm, y_flat, scale_col = self.views
        for in_w, conv_w, conv_b, dt_bias, A, D, out_w, conv, conv_slots, h in self.layers:
            matmul(res, in_w, zxd)
            div(zxd, self._norm_scale(res), zxd)  # [z / 2 | x B C | dt] = in_proj(norm(res))
            conv_slots[slot][...] = xBC  # the causal conv's window: x B C over the oldest input
            np.vecdot(conv, conv_w[slot], xBC)
            add(xBC, conv_b, xBC)  # (conv + bias) / 2
            tanh(zx, tmp_zx)  # silu of z and of the conv in one pass: h + h tanh(h), h = v / 2
            mul(tmp_zx, zx, tmp_zx)
            add(zx, tmp_zx, zx)
            # Δ = softplus(dt + dt_bias) = max(t, log1p(e^min(t, 20))): exact in fp32
            add(dt, dt_bias, delta)
            np.minimum(delta, 20, out=tmp_h)
            exp(tmp_h, tmp_h)
            np.log1p(tmp_h, tmp_h)
            np.maximum(delta, tmp_h, out=delta)
            # h = exp(Δ A) h + (Δ x) B^T;  y = h C + D x, by head
            mul(delta_col, x, delta_x)
            mul(delta, A, delta)
            exp(delta, delta)
            mul(h, delta_heads, h)
            mul(delta_x_groups, B, dBx)
            add(h, dBx, h)
            matmul(h, C, y_groups)
            mul(D, x, tmp_x)
            add(y, tmp_x, y)
            # rmsnorm(y silu(z)) per group, its gain in out_w
            mul(y, z, y)
            np.vecdot(y_norm, y_norm, group_scale)
            add(group_scale, self.eps_group, group_scale)
            np.sqrt(group_scale, group_scale)
            div(y_norm, scale_col, y_norm)
            matmul(y_flat, out_w, mixed)
            add(res, mixed, res)
