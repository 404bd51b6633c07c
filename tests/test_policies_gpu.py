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


def assert_state_dicts_load_both_ways(ours, ssm_cfg: dict) -> None:
    """Our weights in mamba-ssm's MambaLMHeadModel (its mixer: ssm_cfg) and a mamba-ssm model's
    weights in ours give the same logits, on CUDA and on the CPU; our step gives its forward's."""
    from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    c, seq = ours.config, tokens(2, 100)
    ssm_config = SsmConfig(
        d_model=c.d_model,
        d_intermediate=0,
        n_layer=c.n_layer,
        vocab_size=c.vocab_size,
        ssm_cfg=ssm_cfg,
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
        torch.testing.assert_close(theirs(seq).logits[..., : c.vocab_size], ours(seq), **TOL)

    # A checkpoint trained with mamba-ssm gives the same logits here, on CUDA and on the CPU.
    theirs.load_state_dict(their_weights, strict=True)
    ours.load_state_dict(their_weights, strict=True)
    with torch.no_grad():
        expected = theirs(seq).logits[..., : c.vocab_size]
        assert expected.abs().max() > 0
        torch.testing.assert_close(ours(seq), expected, **TOL)
        state = ours.init_state(2)
        stepped = torch.stack([ours.step(seq[:, t], state) for t in range(10)], dim=1)
        torch.testing.assert_close(stepped, expected[:, :10], **TOL)
        torch.testing.assert_close(ours.cpu()(seq.cpu()), expected.cpu(), **TOL)


@needs_mamba_ssm
def test_state_dicts_load_both_ways_into_mamba_ssm():
    ours = tiny("mamba")
    c = ours.config
    assert_state_dicts_load_both_ways(ours, {"layer": "Mamba1", "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand})


def test_transformer_step_and_prefill_equal_forward_on_cuda():
    policy, seq = tiny("transformer"), tokens(2, 100)
    with torch.no_grad():
        full = policy(seq)
        state = policy.init_state(2)
        prefilled = torch.cat([policy(part, state) for part in seq[:, :90].split(7, dim=1)], dim=1)
        stepped = torch.stack([policy.step(seq[:, t], state) for t in range(90, 100)], dim=1)
    torch.testing.assert_close(prefilled, full[:, :90], **TOL)
    torch.testing.assert_close(stepped, full[:, 90:], **TOL)


@pytest.mark.parametrize("chunk", [2, 13, 300])
def test_kernel_prefill_into_an_existing_state(kernels, chunk):
    """The scan kernel starts from h = 0; prefill adds what the existing state contributes."""
    policy, seq = tiny("mamba"), tokens(2, 400)
    with torch.no_grad():
        full = policy(seq)
        state = policy.init_state(2)
        policy(seq[:, :100], state)
        prefilled = torch.cat([policy(part, state) for part in seq[:, 100:].split(chunk, dim=1)], dim=1)
        ref_state = run_torch_path(lambda: _prefill_state(policy, seq))
    torch.testing.assert_close(prefilled, full[:, 100:], **TOL)
    torch.testing.assert_close(state.ssm, ref_state.ssm, **TOL)
    torch.testing.assert_close(state.conv, ref_state.conv, **TOL)


def _prefill_state(policy, seq):
    state = policy.init_state(seq.shape[0])
    policy(seq, state)
    return state


@pytest.mark.parametrize("kind, step", [("mamba", "fused"), ("mamba", "split"), ("mamba", "reference"),
                                        ("mamba2", "reference"), ("gru", "reference")])
def test_a_captured_step_equals_forward_and_resets_rows(kind, step):
    """Each CUDA stepper, its step captured in a CUDA graph as the runtime captures it, gives the
    parallel forward's logits after a prefill; a row reset starts that row afresh."""
    from mamba_agent.steppers import graphed, make_stepper, step_error

    policy, seq = tiny(kind), tokens(3, 40)
    if why := step_error(step, policy, "cuda"):
        pytest.skip(why)
    with torch.no_grad():
        full = policy(seq)
        stepper = make_stepper(step, policy, 3)
        feed, out = torch.zeros(3, dtype=torch.long, device="cuda"), torch.zeros(3, VOCAB, device="cuda")
        replay = graphed(lambda: out.copy_(stepper.logits(feed)), torch.device("cuda"))
        stepper.reset()  # the warm-up stepped it
        got = [stepper.prefill(seq[:, :10]).clone()]
        for t in range(10, 40):
            feed.copy_(seq[:, t])
            replay()
            got.append(out.clone())
        torch.testing.assert_close(torch.stack(got, dim=1), full[:, 9:], **TOL)
        stepper.reset_row(1)
        fresh = policy(seq[1:2, :5])[0]
        steps = []
        for t in range(5):
            feed.copy_(seq[:, t])
            replay()
            steps.append(out[1].clone())
    torch.testing.assert_close(torch.stack(steps), fresh, **TOL)


@pytest.mark.parametrize("sizes", [dict(d_model=64, n_layer=2), dict(d_model=128, n_layer=4), dict(d_model=768, n_layer=2)])
def test_fused_cuda_step_equals_policy_step(sizes):
    """mamba_cuda.FusedStep (6 kernels a layer, Δ's projections merged) gives policy.step's
    logits and states, at the shipped size, a tiny one, and the 130M configuration's width."""
    found = mamba._kernels()
    if found is None:
        pytest.skip("mamba-ssm kernels not importable")
    from mamba_agent.policies.mamba_cuda import FusedStep

    torch.manual_seed(0)
    policy = build_policy({"kind": "mamba", "vocab_size": VOCAB, **sizes}).cuda().eval()
    with torch.no_grad():  # move the norm gains and conv biases off their init so that errors show
        policy.backbone.embedding.weight.mul_(30)
        for layer in policy.backbone.layers:
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.mixer.conv1d.bias.uniform_(-0.5, 0.5)
    seq = tokens(5, 30)
    fused, expected_state, state = FusedStep(policy, found.selective_state_update), policy.init_state(5), policy.init_state(5)
    with torch.no_grad():
        for t in range(30):
            torch.testing.assert_close(fused(seq[:, t], state), policy.step(seq[:, t], expected_state), **TOL)
    torch.testing.assert_close(state.conv, expected_state.conv, **TOL)
    torch.testing.assert_close(state.ssm, expected_state.ssm, **TOL)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_gpu_checkpoint_decodes_the_same_on_the_cpu(tmp_path, kind):
    """Trained on the GPU (a few steps here), saved, loaded on the CPU: the NumPy step and the
    step the runtime picks on CUDA give the same logits."""
    from mamba_agent.checkpoint import load_checkpoint, save_checkpoint

    policy, seq = tiny(kind), tokens(2, 30)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(policy(seq).flatten(0, 1), seq.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    save_checkpoint(policy, tmp_path / "ckpt", "addition", {})
    cpu_policy, _ = load_checkpoint(str(tmp_path / "ckpt"), device="cpu")
    from mamba_agent.steppers import choose_step, make_stepper

    with torch.no_grad():
        gpu = make_stepper(choose_step(policy, "cuda", tensor_rows=False), policy, 2)
        cpu = make_stepper("numpy", cpu_policy, 2)
        for t in range(30):
            a, b = gpu.logits(seq[:, t]).cpu(), cpu.logits(seq[:, t].cpu())
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru", "mamba", "mamba2"])
def test_checkpoint_of_a_cuda_policy_saves_and_loads(tmp_path, kind):
    """cuDNN packs an RNN's weights into one buffer on CUDA; saving must still work (it once
    failed in safetensors and lost two training runs), and the weights must come back equal."""
    from mamba_agent.checkpoint import load_checkpoint, save_checkpoint

    policy = tiny(kind)
    save_checkpoint(policy, tmp_path, "addition", {})
    loaded, _ = load_checkpoint(str(tmp_path), device="cuda")
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
