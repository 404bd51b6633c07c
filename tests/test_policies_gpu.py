"""GPU tests: mamba-ssm's kernels against our PyTorch path on the same weights, and our layout
against mamba-ssm's own MambaLMHeadModel. Skipped without CUDA (and without mamba-ssm where
stated). fp32 comparisons use rtol = atol = 1e-3 on logits of order 1."""

import importlib.util

import pytest
import torch

from mamba_agent.policies import build_policy, mamba

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

VOCAB = 300
TOL = dict(rtol=1e-3, atol=1e-3)
needs_mamba_ssm = pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm")


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    policy = build_policy({"kind": kind, "vocab_size": VOCAB, "d_model": 64, "n_layer": 2}).cuda().eval()
    with torch.no_grad():  # init logits are ~0.1; scale the embeddings so that errors would show
        for name, p in policy.named_parameters():
            if "embed" in name:
                p.mul_(30)
    return policy


def tokens(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1)).cuda()


@pytest.fixture
def torch_path(monkeypatch):
    """Force the PyTorch path on CUDA for the duration of a test."""
    monkeypatch.setenv("MAMBA_AGENT_NO_KERNELS", "1")
    mamba._kernels.cache_clear()
    yield
    monkeypatch.undo()
    mamba._kernels.cache_clear()


@pytest.fixture(params=["causal-conv1d", "torch-conv"])
def kernels(request, monkeypatch):
    """The kernels, with and without the optional causal-conv1d package."""
    found = mamba._kernels()
    if found is None:
        pytest.skip("mamba-ssm kernels not importable")
    if request.param == "torch-conv":
        found = found._replace(causal_conv1d_fn=None, causal_conv1d_update=None)
        monkeypatch.setattr(mamba, "_kernels", lambda: found)
    return found


def run_torch_path(fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mamba, "_kernels", lambda: None)
        return fn()


def test_kernel_forward_and_backward_equal_torch_path(kernels):
    policy, seq = tiny("mamba"), tokens(2, 300)

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


def test_kernel_step_and_prefill_equal_forward(kernels):
    policy, seq = tiny("mamba"), tokens(2, 40)
    with torch.no_grad():
        full = policy(seq)
        state = policy.init_state(2)
        stepped = torch.stack([policy.step(seq[:, t], state) for t in range(20)], dim=1)
        prefilled = policy(seq[:, 20:33], state)
        continued = torch.stack([policy.step(seq[:, t], state) for t in range(33, 40)], dim=1)
    torch.testing.assert_close(stepped, full[:, :20], **TOL)
    torch.testing.assert_close(prefilled, full[:, 20:33], **TOL)
    torch.testing.assert_close(continued, full[:, 33:], **TOL)


def test_torch_path_on_cuda_equals_cpu(torch_path):
    policy, seq = tiny("mamba"), tokens(2, 50)
    with torch.no_grad():
        torch.testing.assert_close(policy(seq).cpu(), policy.cpu()(seq.cpu()), **TOL)


def test_bf16_autocast_kernel_path_close_to_fp32(kernels):
    policy, seq = tiny("mamba"), tokens(2, 200)
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
def test_state_dicts_load_both_ways_into_mamba_ssm():
    from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    ours, seq = tiny("mamba"), tokens(2, 100)
    c = ours.config
    ssm_config = SsmConfig(
        d_model=c.d_model,
        n_layer=c.n_layer,
        vocab_size=c.vocab_size,
        ssm_cfg={"layer": "Mamba1", "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand},
        rms_norm=True,
        residual_in_fp32=True,
        fused_add_norm=True,
        pad_vocab_size_multiple=c.pad_vocab_size_multiple,
    )
    torch.manual_seed(1)
    theirs = MambaLMHeadModel(ssm_config).cuda().eval()
    their_weights = {k: v.clone() for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(seq).logits[..., :VOCAB], ours(seq), **TOL)

    # A checkpoint trained with mamba-ssm gives the same logits here, on CUDA and on the CPU.
    theirs.load_state_dict(their_weights, strict=True)
    ours.load_state_dict(their_weights, strict=True)
    with torch.no_grad():
        expected = theirs(seq).logits[..., :VOCAB]
        torch.testing.assert_close(ours(seq), expected, **TOL)
        torch.testing.assert_close(ours.cpu()(seq.cpu()), expected.cpu(), **TOL)


def test_transformer_step_and_prefill_equal_forward_on_cuda():
    policy, seq = tiny("transformer"), tokens(2, 100)
    with torch.no_grad():
        full = policy(seq)
        state = policy.init_state(2)
        prefilled = torch.cat([policy(part, state) for part in seq[:, :90].split(7, dim=1)], dim=1)
        stepped = torch.stack([policy.step(seq[:, t], state) for t in range(90, 100)], dim=1)
    torch.testing.assert_close(prefilled, full[:, :90], **TOL)
    torch.testing.assert_close(stepped, full[:, 90:], **TOL)
