"""Mamba-2's chunked SSD scan against the plain recurrence, its chunk sizes, its mamba-ssm layout
and initialization (the behaviour every policy shares: tests/test_policies.py)."""

import pydantic
import pytest
import torch
import torch.nn.functional as F

from mamba_agent.policies import Mamba2Config, build_policy
from mamba_agent.policies.mamba2 import ssd_chunked

from tests.test_policies import ATOL, tiny, tokens


def ssd_sequential(x, delta, A, B, C, h0):
    """The recurrence token by token: h_t = exp(Δ_t A) h_t-1 + Δ_t x_t B_t^T, y_t = h_t C_t."""
    b, L, H, P = x.shape
    R = H // B.shape[2]
    B, C = B.repeat_interleave(R, dim=2), C.repeat_interleave(R, dim=2)  # (b, L, H, N): each head its group's
    h, ys = h0, []
    for t in range(L):
        decay = torch.exp(delta[:, t] * A)[..., None, None]  # (b, H, 1, 1)
        h = decay * h + (delta[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]  # (b, H, P, N)
        ys.append((h @ C[:, t, :, :, None])[..., 0])  # (b, H, P)
    return torch.stack(ys, dim=1), h


def ssd_inputs(L=45, G=2, R=2, P=3, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = G * R
    x, B, C = torch.randn(2, L, H, P, generator=g), torch.randn(2, L, G, N, generator=g), torch.randn(2, L, G, N, generator=g)
    delta = F.softplus(3 * torch.randn(2, L, H, generator=g))  # from ~0 to ~10: decays down to e^-160
    A = -torch.empty(H).uniform_(1, 16, generator=g)
    h0 = torch.randn(2, H, P, N, generator=g)
    return [t.requires_grad_() for t in (x, delta, A, B, C, h0)]


@pytest.mark.parametrize("chunk", [1, 7, 16, 45, 64])  # 7 and 16 do not divide 45; 64 is longer than it
@pytest.mark.parametrize("from_zero", [True, False])
def test_chunked_scan_and_its_gradients_equal_the_recurrence(chunk, from_zero):
    inputs = ssd_inputs()
    x, delta, A, B, C, h0 = inputs
    start = torch.zeros_like(h0) if from_zero else h0
    want_y, want_h = ssd_sequential(x, delta, A, B, C, start)
    got_y, got_h = ssd_chunked(x, delta, A, B, C, chunk, None if from_zero else h0)
    torch.testing.assert_close(got_y, want_y, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(got_h, want_h, atol=ATOL, rtol=1e-5)
    assert want_y.abs().max() > 1
    weights = torch.randn_like(want_y), torch.randn_like(want_h)
    want = torch.autograd.grad((want_y * weights[0]).sum() + (want_h * weights[1]).sum(), inputs, allow_unused=True)
    got = torch.autograd.grad((got_y * weights[0]).sum() + (got_h * weights[1]).sum(), inputs, allow_unused=True)
    for name, w, g in zip(["x", "delta", "A", "B", "C", "h0"], want, got):
        if from_zero and name == "h0":
            continue
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=1e-3, rtol=1e-4, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_every_chunk_size_gives_the_steps_logits(chunk_size):
    """forward's chunked scan, at any chunk size (5, 16 and 64 do not divide 47), equals step."""
    policy, seq = tiny("mamba2", chunk_size=chunk_size), tokens(2, 47)
    with torch.no_grad():
        full = policy(seq)
        state = policy.init_state(2)
        stepped = torch.stack([policy.step(seq[:, t], state) for t in range(47)], dim=1)
        state_after = policy.init_state(2)
        policy(seq, state_after)
    assert full.abs().max() > 1
    torch.testing.assert_close(full, stepped, atol=ATOL, rtol=0)
    torch.testing.assert_close(state_after.ssm, state.ssm, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(state_after.conv, state.conv)


# mamba-ssm's MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=300, rms_norm=True,
# residual_in_fp32=True, ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16})): in_proj
# rows [z (64) | x (64) | B (16) | C (16) | dt (4 heads)], the conv over x B C.
MAMBA_SSM_LAYER = {
    "norm.weight": (32,),
    "mixer.dt_bias": (4,),
    "mixer.A_log": (4,),
    "mixer.D": (4,),
    "mixer.in_proj.weight": (164, 32),
    "mixer.conv1d.weight": (96, 1, 4),
    "mixer.conv1d.bias": (96,),
    "mixer.norm.weight": (64,),
    "mixer.out_proj.weight": (32, 64),
}
MAMBA_SSM_KEYS = {
    "backbone.embedding.weight": (304, 32),  # 300 padded to a multiple of 8
    **{f"backbone.layers.{i}.{k}": shape for i in range(2) for k, shape in MAMBA_SSM_LAYER.items()},
    "backbone.norm_f.weight": (32,),
    "lm_head.weight": (304, 32),
}


def test_state_dict_matches_mamba_ssm():
    policy = tiny("mamba2")
    assert {k: tuple(v.shape) for k, v in policy.state_dict().items()} == MAMBA_SSM_KEYS
    assert policy.lm_head.weight is policy.backbone.embedding.weight
    state = policy.init_state(3)
    assert state.conv.shape == (2, 3, 96, 4) and state.ssm.shape == (2, 3, 4, 16, 16)
    assert state.ssm.dtype == torch.float32


def test_init_follows_mamba_ssm():
    mixer = tiny("mamba2").backbone.layers[0].mixer
    delta, A = F.softplus(mixer.dt_bias), -torch.exp(mixer.A_log)
    assert 1e-3 <= delta.min() and delta.max() <= 1e-1
    assert -16 <= A.min() and A.max() <= -1
    assert (mixer.D == 1).all() and (mixer.norm.weight == 1).all()


def test_config_checks_heads_and_groups():
    with pytest.raises(pydantic.ValidationError, match="headdim"):
        Mamba2Config(vocab_size=300, d_model=32, headdim=48)
    with pytest.raises(pydantic.ValidationError, match="ngroups"):
        Mamba2Config(vocab_size=300, d_model=32, headdim=16, ngroups=3)
    assert build_policy(Mamba2Config(vocab_size=300, d_model=32, headdim=16, ngroups=2)).config.nheads == 4
