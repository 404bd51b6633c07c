"""A Pythia-style (GPT-NeoX) Transformer baseline with rotary positions and a KV cache.

Block: parallel residual x + attn(ln1(x)) + mlp(ln2(x)); rotary embedding on the first
rotary_pct of each head's dims (GPT-NeoX's rotate-half layout); untied output head. The KV cache
is the decode state: it grows with every token, and `state_nbytes` reports that growth.

With `sliding_window` W (Mistral-style), each token attends only to the last W positions, itself
included, and the cache is a ring of W slots (position p in slot p % W): its size is fixed.
Keys are cached after the rotary embedding, so the absolute positions they were rotated by stay
valid; the cache's `length` is the position counter. Shapes use B for batch, L for new tokens,
H for heads, P for tokens already seen.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from mamba_agent.policies.base import Policy, PolicyConfig

_INITIAL_CAPACITY = 64  # cached tokens allocated up front; doubled whenever full


class TransformerConfig(PolicyConfig):
    """Sizes of the Transformer baseline; the defaults give 0.87M parameters at vocab_size 288."""

    kind: Literal["transformer"] = "transformer"
    """Policy kind."""
    d_model: PositiveInt = 128
    """Width of the residual stream."""
    n_layer: PositiveInt = 4
    """Number of blocks."""
    n_head: PositiveInt = 4
    """Attention heads; must divide d_model."""
    rotary_pct: float = Field(0.25, gt=0, le=1)
    """Fraction of each head's dims that get the rotary embedding (Pythia: 0.25)."""
    rotary_base: float = Field(10000.0, gt=0)
    """Base of the rotary frequencies."""
    sliding_window: PositiveInt | None = None
    """Mistral-style attention window W: each token attends to the last W positions (itself
    included) and the KV cache is a fixed ring of W slots. None: full causal attention and a
    cache that grows with the history."""

    @model_validator(mode="after")
    def _check_heads(self) -> "TransformerConfig":
        if self.d_model % self.n_head:
            raise ValueError(f"n_head {self.n_head} must divide d_model {self.d_model}")
        if self.rotary_dims < 2 or self.rotary_dims % 2:
            raise ValueError(
                f"rotary_pct {self.rotary_pct} gives {self.rotary_dims} rotary dims; need an even number >= 2"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def rotary_dims(self) -> int:
        return int(self.head_dim * self.rotary_pct)


@dataclass
class KVCache:
    """Keys (after the rotary embedding) and values of every layer for the tokens seen so far."""

    kv: Tensor
    """(n_layer, 2, B, H, capacity, head_dim). Full attention: slots [0, length) hold the tokens
    seen. Sliding window W: capacity W, position p in slot p % W, the last min(length, W) held."""
    length: int = 0
    """Number of tokens seen, the same for every row (the next token's position)."""


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the first cos.shape[-1] dims of x (..., head_dim), GPT-NeoX layout."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    return torch.cat([x_rot * cos + torch.cat([-x2, x1], dim=-1) * sin, x_pass], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # per head [q | k | v], as GPT-NeoX
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: Tensor | None,
        P: int,
        mask: Tensor | None,
        slots: Tensor | None = None,
    ) -> Tensor:
        """x (B, L, d_model) -> (B, L, d_model). Without kv: self-attention under `mask` (L, L)
        (None: causal). With kv (2, B, H, capacity, head_dim) holding P tokens and room for L
        more: append the new keys and values, and attend over all P + L under `mask` (L, P + L)
        (None: see everything). With `slots` (m,), kv is a ring of W slots: attend over
        [ring | new] under `mask` (L, W + L), then write the last m new keys into those slots."""
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, self.n_head, 3, self.head_dim).transpose(1, 2)  # (B, H, L, 3, head_dim)
        q, k = rotate(qkv[..., :2, :], cos, sin).unbind(-2)  # (B, H, L, head_dim) each
        v = qkv[..., 2, :]  # (B, H, L, head_dim)
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # (B, H, L, head_dim)
        elif slots is not None:
            # Attend before writing: a new key may overwrite a slot that an earlier new query needs.
            keys = torch.cat([kv[0].to(k.dtype), k], dim=2)  # (B, H, W + L, head_dim)
            values = torch.cat([kv[1].to(v.dtype), v], dim=2)  # (B, H, W + L, head_dim)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            m = slots.shape[0]
            kv[0].index_copy_(2, slots, k[:, :, L - m :].detach().to(kv.dtype))
            kv[1].index_copy_(2, slots, v[:, :, L - m :].detach().to(kv.dtype))
        else:
            kv[0, :, :, P : P + L] = k.detach()  # the cache keeps values, not autograd history
            kv[1, :, :, P : P + L] = v.detach()
            y = F.scaled_dot_product_attention(q, kv[0, :, :, : P + L], kv[1, :, :, : P + L], attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, L, -1))  # (B, L, d_model)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.attn = Attention(config)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: Tensor | None,
        P: int,
        mask: Tensor | None,
        slots: Tensor | None = None,
    ) -> Tensor:
        # Pythia's parallel residual: attention and MLP both read x.
        attn = self.attn(self.ln1(x), cos, sin, kv, P, mask, slots)
        return x + attn + self.proj(F.gelu(self.fc(self.ln2(x))))


class TransformerPolicy(Policy):
    """Pythia-style decoder-only Transformer behind the Policy interface; the state is a KV cache."""

    config: TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        d = config.d_model
        self.embed_in = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.embed_out = nn.Linear(d, config.vocab_size, bias=False)
        # cos and sin of the rotary angles for positions [0, table length), extended on demand.
        self.register_buffer("rope_cos", torch.empty(0, 1, config.rotary_dims), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0, 1, config.rotary_dims), persistent=False)

        # GPT-2 initialization: N(0, 0.02), zero biases, and the two residual-branch outputs of each
        # block scaled by 1/sqrt(2 * n_layer) so that the residual sum keeps its variance.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.layers:
            for linear in (block.attn.out, block.proj):
                nn.init.normal_(linear.weight, std=0.02 / (2 * config.n_layer) ** 0.5)

    def _rope(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        """cos, sin (n, 1, rotary_dims) for positions [start, start + n)."""
        if start + n > self.rope_cos.shape[0]:
            self._extend_rope(max(2 * self.rope_cos.shape[0], start + n, _INITIAL_CAPACITY))
        return self.rope_cos[start : start + n], self.rope_sin[start : start + n]

    # The runtime decodes under inference_mode; a table made there could not be used in training.
    @torch.inference_mode(False)
    def _extend_rope(self, size: int) -> None:
        r, device = self.config.rotary_dims, self.rope_cos.device
        inv_freq = self.config.rotary_base ** (-torch.arange(0, r, 2, device=device) / r)  # (r/2,)
        positions = torch.arange(size, device=device, dtype=torch.float32)  # (size,)
        angles = torch.outer(positions, inv_freq)  # (size, r/2)
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (size, 1, r)
        self.rope_cos = angles.cos().to(self.rope_cos.dtype)
        self.rope_sin = angles.sin().to(self.rope_sin.dtype)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        c, weight = self.config, self.embed_out.weight
        device = weight.device if device is None else device
        capacity = c.sliding_window or _INITIAL_CAPACITY
        shape = (c.n_layer, 2, batch_size, c.n_head, capacity, c.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=weight.dtype))

    def _reserve(self, cache: KVCache, n: int) -> None:
        """Make room for n more tokens, doubling the capacity (one copy per doubling)."""
        capacity = cache.kv.shape[4]
        if cache.length + n <= capacity:
            return
        while capacity < cache.length + n:
            capacity *= 2
        kv = cache.kv.new_zeros(cache.kv.shape[:4] + (capacity, cache.kv.shape[5]))
        kv[..., : cache.length, :] = cache.kv[..., : cache.length, :]
        cache.kv = kv

    def _window_mask(self, P: int, L: int, cached: bool, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """Sliding window W: which keys the new tokens at positions [P, P + L) see, and the ring
        slots their keys go to. Without a cache: keys are the new ones, mask (L, L), slots None.
        With one: keys are [ring | new], mask (L, W + L), slots (min(L, W),) for the last new."""
        W = self.config.sliding_window
        new = torch.arange(P, P + L, device=device)  # (L,) positions of the new tokens
        q = new[:, None]  # (L, 1) query positions
        sees_new = (new <= q) & (q - new < W)  # (L, L)
        if not cached:
            return sees_new, None
        slot = torch.arange(W, device=device)  # (W,)
        held = P - 1 - (P - 1 - slot) % W  # (W,) position in each slot (negative: never written)
        sees_ring = (held >= 0) & (q - held < W)  # (L, W)
        slots = new[-min(L, W) :] % W  # (m,)
        return torch.cat([sees_ring, sees_new], dim=1), slots

    def forward(self, tokens: Tensor, state: KVCache | None = None) -> Tensor:
        L = tokens.shape[1]
        P = 0 if state is None else state.length
        cos, sin = self._rope(P, L)
        mask, slots = None, None
        if self.config.sliding_window is not None:
            mask, slots = self._window_mask(P, L, state is not None, tokens.device)
        elif state is not None:
            self._reserve(state, L)
            if L > 1:  # new token i sees the P cached tokens and new tokens <= i
                mask = torch.ones(L, P + L, dtype=torch.bool, device=tokens.device).tril(P)
        x = self.embed_in(tokens)  # (B, L, d_model)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, None if state is None else state.kv[i], P, mask, slots)
        if state is not None:
            state.length += L
        return self.embed_out(self.ln_f(x)).float()  # (B, L, vocab_size)

    @torch.no_grad()
    def step(self, token: Tensor, state: KVCache) -> Tensor:
        return self.forward(token[:, None], state)[:, 0]  # (B, vocab_size)

    def state_nbytes(self, state: KVCache) -> int:
        return state.kv.nbytes
