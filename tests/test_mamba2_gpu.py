"""GPU tests of Mamba-2: mamba-ssm's kernels (chunk scan, state update) against our PyTorch path
on the same weights, and our layout against mamba-ssm's own MambaLMHeadModel with a Mamba2
mixer. Skipped without CUDA (and without mamba-ssm where stated). fp32 comparisons use
rtol = atol = 1e-3 on logits of order 1."""

import importlib.util

import pytest
import torch

from mamba_agent.policies import build_policy, mamba2

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from tests.test_policies_gpu import TOL, VOCAB, assert_state_dicts_load_both_ways, tokens  # noqa: E402 (after the skip)

needs_mamba_ssm = pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm")


def tiny(seed: int = 0, **sizes):
    torch.manual_seed(seed)
    config = {"kind": "mamba2", "vocab_size": VOCAB, "d_model": 64, "n_layer": 2, "d_state": 32, "headdim": 16, **sizes}
    policy = build_policy(config).cuda().eval()
    with torch.no_grad():  # init logits are ~0.1; scale the embeddings so that errors would show
        policy.backbone.embedding.weight.mul_(30)
        for layer in policy.backbone.layers:  # and move the gains and biases off their init
            layer.mixer.norm.weight.uniform_(0.5, 1.5)
            layer.mixer.conv1d.bias.uniform_(-0.5, 0.5)
            layer.mixer.D.uniform_(0.5, 1.5)
    return policy


@pytest.fixture(params=["causal-conv1d", "torch-conv"])
def kernels(request, monkeypatch):
    """The kernels, with and without the optional causal-conv1d package."""
    found = mamba2._kernels()
    if found is None:
        pytest.skip("mamba-ssm kernels not importable")
    if request.param == "torch-conv":
        found = found._replace(causal_conv1d_fn=None, causal_conv1d_update=None)
        monkeypatch.setattr(mamba2, "_kernels", lambda: found)
    return found


def run_torch_path(fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mamba2, "_kernels", lambda: None)
        return fn()


@pytest.mark.parametrize("sizes", [{}, {"ngroups": 2}, {"chunk_size": 256}])
def test_kernel_forward_and_backward_equal_torch_path(kernels, sizes):
    policy, seq = tiny(**sizes), tokens(2, 300)  # 300: several chunks of 64, one part chunk

    def loss_and_grads():
        policy.zero_grad()
        logits = policy(seq)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), seq.flatten()).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in policy.named_parameters()}

    logits, grads = loss_and_grads()
    ref_logits, ref_grads = run_torch_path(loss_and_grads)
    assert ref_logits.abs().max() > 1
    torch.testing.assert_close(logits, ref_logits, **TOL)
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        torch.testing.assert_close(grad / scale, ref_grads[name] / scale, **TOL, msg=name)


@pytest.mark.parametrize("chunk", [2, 13, 300])
def test_kernel_step_and_prefill_equal_torch_path(kernels, chunk):
    """Kernel steps, then kernel prefills into that state (its initial_states), then steps: the
    logits of one whole forward, and the states of the PyTorch path."""
    policy, seq = tiny(), tokens(2, 420)

    def run():
        with torch.no_grad():
            state = policy.init_state(2)
            stepped = [policy.step(seq[:, t], state) for t in range(20)]
            prefilled = [policy(part, state) for part in seq[:, 20:410].split(chunk, dim=1)]
            continued = [policy.step(seq[:, t], state) for t in range(410, 420)]
            return torch.cat([torch.stack(stepped, 1), *prefilled, torch.stack(continued, 1)], dim=1), state

    with torch.no_grad():
        full = policy(seq)
    got, state = run()
    ref, ref_state = run_torch_path(run)
    torch.testing.assert_close(got, full, **TOL)
    torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(state.ssm, ref_state.ssm, **TOL)
    torch.testing.assert_close(state.conv, ref_state.conv, **TOL)


def test_torch_path_on_cuda_equals_cpu():
    policy, seq = tiny(), tokens(2, 50)
    with torch.no_grad():
        expected = run_torch_path(lambda: policy(seq))
        torch.testing.assert_close(expected.cpu(), policy.cpu()(seq.cpu()), **TOL)


def test_bf16_autocast_kernel_path_close_to_fp32(kernels):
    policy, seq = tiny(), tokens(2, 200)
    with torch.no_grad():
        ref = policy(seq)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = policy(seq)
            state = policy.init_state(2)
            stepped = torch.stack([policy.step(seq[:, t], state) for t in range(10)], dim=1)
    assert logits.dtype == torch.float32
    scale = ref.abs().max()
    assert (logits - ref).abs().max() < 0.05 * scale
    assert (stepped - ref[:, :10]).abs().max() < 0.05 * scale


@needs_mamba_ssm
@pytest.mark.parametrize("ngroups", [1, 2])
def test_state_dicts_load_both_ways_into_mamba_ssm(ngroups):
    ours = tiny(ngroups=ngroups)
    c = ours.config
    assert_state_dicts_load_both_ways(ours, {
        "layer": "Mamba2", "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand, "headdim": c.headdim,
        "ngroups": c.ngroups, "chunk_size": c.chunk_size,
        "use_mem_eff_path": False,  # its fused path needs causal-conv1d
    })
