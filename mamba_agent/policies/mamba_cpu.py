"""Mamba's decode step on the CPU in NumPy: the `numpy` stepper (mamba_agent/steppers.py)."""

import numpy as np
import threadpoolctl
import torch
from torch import Tensor

from mamba_agent.policies.mamba import MambaPolicy
from mamba_agent.steppers import Stepper


class NumpyStepper(Stepper):
    """Mamba's step on the CPU in NumPy, weights prepared once and every buffer allocated once.

    At batch 1 the step is ~0.7M multiply-adds, tens of microseconds of arithmetic; PyTorch's
    2-10 us per operation (dispatch, allocation) made it 1.2 ms, NumPy with `out=` into fixed
    buffers costs ~1 us. It works on NumPy views of the policy's state tensors, so `prefill`
    (PyTorch) and `step` continue each other's state. Folded once into the weights, to save
    operations per token: each RMSNorm gain into the matrix after it (W (g x) = (W diag g) x),
    the Δ bias as an extra input column that is always 1. The conv state is a ring: a step
    writes its input over the oldest one and the conv uses the weights rotated to match (two
    strided copies a layer fewer); `prefill` first puts the ring back in PyTorch's order.
    """

    name = "numpy"

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
        self.residual, self.mixed = np.zeros((B, d), f32), np.zeros((B, d), f32)
        self.scale = np.zeros((B, 1), f32)
        self.xz, self.tmp_xz = np.zeros((B, 2 * di), f32), np.zeros((B, 2 * di), f32)  # [x | z / 2]; x becomes the conv's output / 2
        self.dbc = np.ones((B, 2 * N + R + 1), f32)  # [B | C | dt (low rank) | 1]
        self.delta, self.y, self.tmp = (np.zeros((B, di), f32) for _ in range(3))
        self.dA, self.dBx = np.zeros((B, di, N), f32), np.zeros((B, di, N), f32)
        self.logits_out = np.zeros((B, c.vocab_size), f32)
        self.ids = torch.zeros(B, dtype=torch.long)  # greedy's answer, a tensor over NumPy's buffer
        self.ids_out = self.ids.numpy()
        self.feed, self.feed_in = None, None  # the last feed tensor and its NumPy view (the runtime keeps one)
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
        # ufuncs as locals and outputs passed by position: ~0.15 us less a call, ~125 calls a step.
        mul, add, div, exp, tanh, matmul = np.multiply, np.add, np.divide, np.exp, np.tanh, np.matmul
        res, xz, tmp_xz, delta, y, tmp, dA, dBx, mixed = (
            self.residual, self.xz, self.tmp_xz, self.delta, self.y, self.tmp, self.dA, self.dBx, self.mixed,
        )
        x, z, x_proj_out, B, C, dt, delta_col, y_col = self.views
        slot = self.slot = (self.slot + 1) % self.d_conv  # over the oldest input
        if feed is not self.feed:
            self.feed, self.feed_in = feed, feed.numpy()
        self.embedding.take(self.feed_in, 0, res)  # methods, not np.take and np.argmax: no dispatch
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
        return matmul(res, self.head, self.logits_out)

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
