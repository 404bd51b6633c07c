"""The fast selective scans (the fused CPU kernel, the chunked PyTorch scan) against the
sequential reference: outputs, final states and the gradients of every input, from zero and from
an initial state, at chunkings that do and do not divide the length, and over decays that
underflow; and the Mamba policy's parameter gradients through each."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from mamba_agent.policies import MambaConfig, MambaPolicy
from mamba_agent.policies import mamba as mamba_module
from mamba_agent.policies import mamba_scan
from mamba_agent.policies.mamba_scan import (
    causal_conv_silu,
    chunked_selective_scan,
    cpu_kernel,
    cpu_selective_scan,
    selective_scan,
)

needs_kernel = pytest.mark.skipif(cpu_kernel() is None, reason="no C compiler: the fused CPU scan is not built")


def scan_inputs(rows, L, d, N, with_h0=True, decay=0.0, seed=0):
    """u, dt, dt_bias, A, B, C, D, z, h0 as the mixer makes them, time-major; decay shifts log
    Δ|A| up."""
    g = torch.Generator().manual_seed(seed)
    u, z = torch.randn(rows, L, d, generator=g), torch.randn(rows, L, d, generator=g)
    dt, dt_bias = torch.randn(rows, L, d, generator=g) + decay, torch.randn(d, generator=g) - 1
    A = -torch.exp(torch.randn(d, N, generator=g) + decay)
    B, C = torch.randn(rows, L, N, generator=g), torch.randn(rows, L, N, generator=g)
    D = torch.randn(d, generator=g)
    h0 = torch.randn(rows, d, N, generator=g) if with_h0 else None
    return [x.requires_grad_() if x is not None else None for x in (u, dt, dt_bias, A, B, C, D, z, h0)]


def outputs_and_grads(scan, inputs, seed=1):
    out, h = scan(*inputs)
    g = torch.Generator().manual_seed(seed)
    d_out, d_h = torch.randn(out.shape, generator=g), torch.randn(h.shape, generator=g)
    grads = torch.autograd.grad((out, h), [x for x in inputs if x is not None], (d_out, d_h))
    return [out, h, *grads]


def assert_same(got, want, rtol=1e-4):
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=0, atol=rtol * w.abs().max().item())


CASES = [  # rows, L, d_inner, N, with h0
    (3, 37, 40, 4, True),  # 40 channels: two groups of 16 and a partial one
    (2, 70, 32, 16, False),
    (1, 100, 48, 5, True),  # one row: the kernel's threads split the channels
    (2, 1, 16, 3, True),
]


@pytest.mark.parametrize("rows,L,d,N,with_h0", CASES)
@pytest.mark.parametrize("block", [10**9, 7 * 48 * 5, 1000])  # whole, blocks of 7 steps (not dividing), ~1 step
def test_chunked_scan_equals_the_reference(rows, L, d, N, with_h0, block):
    inputs = scan_inputs(rows, L, d, N, with_h0)
    want = outputs_and_grads(selective_scan, inputs)
    got = outputs_and_grads(lambda *x: chunked_selective_scan(*x, block_elements=block), inputs)
    assert_same(got, want)


@needs_kernel
@pytest.mark.parametrize("rows,L,d,N,with_h0", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernel_equals_the_reference(rows, L, d, N, with_h0, threads):
    inputs = scan_inputs(rows, L, d, N, with_h0)
    want = outputs_and_grads(selective_scan, inputs)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = outputs_and_grads(cpu_selective_scan, inputs)
    finally:
        torch.set_num_threads(before)
    assert_same(got, want)


@pytest.mark.parametrize("scan", ["chunked", "cpu"])
def test_long_sequences_whose_decays_underflow(scan):
    """Δ|A| up to ~1e3 a step over 3,000 steps: exp(cumsum(Δ A)) is 0 after a few steps, its
    inverse overflows, yet each scan gives the reference's finite numbers."""
    if scan == "cpu" and cpu_kernel() is None:
        pytest.skip("no C compiler")
    inputs = scan_inputs(2, 3000, 16, 4, decay=3.0)
    delta, A = F.softplus(inputs[1] + inputs[2]).detach(), inputs[3].detach()
    decay = torch.cumsum(delta[..., None] * A, dim=1)  # (rows, L, d, N), log of the running product
    assert (torch.exp(decay[:, 100]) == 0).all() and torch.isinf(torch.exp(-decay[:, 100])).any()
    fast = cpu_selective_scan if scan == "cpu" else lambda *x: chunked_selective_scan(*x, block_elements=5000)
    assert_same(outputs_and_grads(fast, inputs), outputs_and_grads(selective_scan, inputs))


@pytest.mark.parametrize("scan", ["chunked", "cpu"])
def test_policy_gradients_equal_the_reference(scan, monkeypatch):
    """Every parameter's gradient of a training loss, through the policy, with each scan."""
    if scan == "cpu" and cpu_kernel() is None:
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    policy = MambaPolicy(MambaConfig(vocab_size=50, d_model=32, n_layer=2, d_state=8))
    tokens = torch.randint(0, 50, (3, 41))

    def grads(scan_fn):
        monkeypatch.setattr(mamba_module, "fast_selective_scan", scan_fn)
        policy.zero_grad()
        F.cross_entropy(policy(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        return [p.grad.clone() for p in policy.parameters()]

    fast = cpu_selective_scan if scan == "cpu" else lambda *x: chunked_selective_scan(*x, block_elements=500)
    assert_same(grads(fast), grads(selective_scan))


def test_policy_runs_the_chunked_scan_without_a_compiler(monkeypatch):
    """Without the kernel the same logits come from the chunked PyTorch scan, prefill included."""
    torch.manual_seed(0)
    policy = MambaPolicy(MambaConfig(vocab_size=50, d_model=32, n_layer=2, d_state=8)).eval()
    tokens = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        want = policy(tokens)
        monkeypatch.setattr(mamba_scan, "cpu_kernel", lambda: None)
        state = policy.init_state(2)
        got = torch.cat([policy(tokens[:, :17], state), policy(tokens[:, 17:], state)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.skipif(not any(map(shutil.which, ("cc", "gcc", "clang"))), reason="no C compiler")
def test_the_cpu_kernel_builds_where_there_is_a_compiler():
    assert cpu_kernel() is not None


@needs_kernel
@pytest.mark.parametrize("with_history", [False, True])
@pytest.mark.parametrize("L", [1, 2, 50])  # shorter than the window, and longer
def test_cpu_conv_equals_the_pytorch_conv(with_history, L, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*s, generator=g).requires_grad_() for s in ((3, L, 40), (40, 4), (40,)))
    history = torch.randn(3, 3, 40, generator=g) if with_history else None
    d_out = torch.randn(3, L, 40, generator=g)

    def run():
        out = causal_conv_silu(x, history, weight, bias)
        return [out, *torch.autograd.grad(out, (x, weight, bias), d_out)]

    fused = run()
    monkeypatch.setattr(mamba_scan, "cpu_kernel", lambda: None)
    assert_same(fused, run())
