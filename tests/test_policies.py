"""CPU tests of the neural policies: decode and prefill equal the parallel forward, state sizes,
the mamba-ssm parameter layout, config validation and gradients. fp32 throughout; logits are O(1)
(embeddings scaled up), so atol 1e-4 is a tight check. The lookup table: tests/test_lookup.py."""

import pydantic
import pytest
import torch
import torch.nn.functional as F

from mamba_agent.policies import (
    POLICY_CONFIGS,
    GRUConfig,
    LookupConfig,
    LSTMConfig,
    Mamba2Config,
    MambaConfig,
    TransformerConfig,
    build_policy,
)
from mamba_agent.steppers import choose_step, make_stepper

# Every neural policy, by test id: its config fields beyond the tiny sizes below.
CASES = {
    "mamba": {"kind": "mamba"},
    "mamba2": {"kind": "mamba2", "d_state": 16, "headdim": 16, "chunk_size": 16},  # 4 heads; chunks of 16 tokens
    "transformer": {"kind": "transformer"},
    "transformer-window": {"kind": "transformer", "sliding_window": 8},  # smaller than the sequences
    "lstm": {"kind": "lstm", "hidden": 48},
    "gru": {"kind": "gru", "hidden": 48},
}
KINDS = list(CASES)


def auto_stepper(policy, batch_size: int):
    """The stepper the runtime picks for `policy` on the CPU."""
    return make_stepper(choose_step(policy, "cpu", tensor_rows=False), policy, batch_size)
FIXED_STATE = ["mamba", "mamba2", "transformer-window", "lstm", "gru"]
VOCAB = 300
ATOL = 1e-4


def tiny(case: str, seed: int = 0, **sizes):
    torch.manual_seed(seed)
    policy = build_policy({"vocab_size": VOCAB, "d_model": 32, "n_layer": 2, **CASES[case], **sizes}).eval()
    with torch.no_grad():  # init logits are ~0.1; scale the embeddings so that errors would show
        for name, p in policy.named_parameters():
            if "embed" in name or name.startswith("head"):  # an RNN's logits are bounded by its head
                p.mul_(30)
    return policy


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_step_equals_forward(kind):
    policy, seq = tiny(kind), tokens(2, 100)  # 100 > the KV cache's initial capacity: it grows
    with torch.no_grad():
        full = policy(seq)  # (2, 100, VOCAB)
        state = policy.init_state(2)
        stepped = torch.stack([policy.step(seq[:, t], state) for t in range(seq.shape[1])], dim=1)
    assert full.shape == (2, 100, VOCAB) and full.dtype == torch.float32
    assert full.abs().max() > 1  # the comparison below is not trivially small
    torch.testing.assert_close(stepped, full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 3, 7, 20, 60])  # 20, 60: chunks longer than the window
def test_chunked_prefill_equals_forward_and_step_continues(kind, chunk):
    policy, seq = tiny(kind), tokens(2, 65)
    prompt, rest = seq[:, :60], seq[:, 60:]
    with torch.no_grad():
        full = policy(seq)
        state = policy.init_state(2)
        prefilled = torch.cat([policy(part, state) for part in prompt.split(chunk, dim=1)], dim=1)
        continued = torch.stack([policy.step(rest[:, t], state) for t in range(rest.shape[1])], dim=1)
        restarted = policy(prompt[:, -chunk:])  # the same last chunk without its history
    torch.testing.assert_close(prefilled, full[:, :60], atol=ATOL, rtol=0)
    torch.testing.assert_close(continued, full[:, 60:], atol=ATOL, rtol=0)
    if chunk < 60:  # the history matters, so the match above means the state carried it
        assert (restarted - full[:, 60 - chunk : 60]).abs().max() > 100 * ATOL


@pytest.mark.parametrize("kind", KINDS)
def test_stepper_prefills_a_long_prompt_in_chunks(kind):
    """The stepper splits a prefill into calls of at most prefill_row_tokens row-tokens; the
    logits after the prompt and the next step are those of one whole forward."""
    policy, seq = tiny(kind), tokens(3, 41)
    with torch.no_grad():
        full = policy(seq)
        stepper = auto_stepper(policy, 3)
        stepper.prefill_row_tokens = 3 * 7  # chunks of 7 tokens: 6 calls for 40
        after_prompt = stepper.prefill(seq[:, :40]).clone()
        after_step = stepper.logits(seq[:, 40])
    torch.testing.assert_close(after_prompt, full[:, 39], atol=ATOL, rtol=0)
    torch.testing.assert_close(after_step, full[:, 40], atol=ATOL, rtol=0)


def test_mamba_state_size_is_constant():
    policy = build_policy(MambaConfig(vocab_size=VOCAB, d_model=8, n_layer=1, d_state=4)).eval()
    with torch.no_grad():
        short = policy.init_state(1)
        for token in tokens(1, 10)[0]:
            policy.step(token[None], short)
        long = policy.init_state(1)
        for part in tokens(1, 100_000).split(4096, dim=1):
            policy(part, long)
    assert policy.state_nbytes(long) == policy.state_nbytes(short) > 0
    assert torch.isfinite(long.ssm).all()


@pytest.mark.parametrize("kind", FIXED_STATE)
def test_state_size_is_fixed(kind):
    """10 stepped tokens and 1,000 prefilled then 10 stepped: the same bytes, all finite."""
    policy, seq = tiny(kind), tokens(1, 1010)
    with torch.no_grad():
        short = policy.init_state(1)
        for t in range(10):
            policy.step(seq[:, t], short)
        long = policy.init_state(1)
        policy(seq[:, :1000], long)
        for t in range(1000, 1010):
            policy.step(seq[:, t], long)
    assert policy.state_nbytes(long) == policy.state_nbytes(short) == policy.state_nbytes(policy.init_state(1)) > 0
    assert all(torch.isfinite(v).all() for v in vars(long).values() if isinstance(v, torch.Tensor))


def test_sliding_window_sees_only_the_window():
    """Tokens more than W - 1 positions back change nothing (and closer ones do)."""
    policy, seq = tiny("transformer-window"), tokens(1, 50)
    other = seq.clone()
    other[:, :20] = tokens(1, 20, seed=2)
    with torch.no_grad():
        a, b = policy(seq), policy(other)
    # With 2 layers a token sees 2 * (W - 1) = 14 positions back: positions >= 34 are unchanged.
    torch.testing.assert_close(a[:, 34:], b[:, 34:], atol=ATOL, rtol=0)
    assert (a[:, 20:34] - b[:, 20:34]).abs().max() > 100 * ATOL


def test_transformer_state_grows():
    policy, seq = tiny("transformer"), tokens(1, 1000)
    with torch.no_grad():
        short = policy.init_state(1)
        for t in range(10):
            policy.step(seq[:, t], short)
        long = policy.init_state(1)
        policy(seq, long)
    assert long.length == 1000 and short.length == 10
    assert policy.state_nbytes(long) > 10 * policy.state_nbytes(short)


# mamba-ssm's MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=300,
# ssm_cfg={"layer": "Mamba1"}, rms_norm=True, residual_in_fp32=True)).state_dict()
MAMBA_SSM_LAYER = {
    "norm.weight": (32,),
    "mixer.A_log": (64, 16),
    "mixer.D": (64,),
    "mixer.in_proj.weight": (128, 32),
    "mixer.conv1d.weight": (64, 1, 4),
    "mixer.conv1d.bias": (64,),
    "mixer.x_proj.weight": (34, 64),
    "mixer.dt_proj.weight": (64, 2),
    "mixer.dt_proj.bias": (64,),
    "mixer.out_proj.weight": (32, 64),
}
MAMBA_SSM_KEYS = {
    "backbone.embedding.weight": (304, 32),  # 300 padded to a multiple of 8
    **{f"backbone.layers.{i}.{k}": shape for i in range(2) for k, shape in MAMBA_SSM_LAYER.items()},
    "backbone.norm_f.weight": (32,),
    "lm_head.weight": (304, 32),
}


def test_mamba_state_dict_matches_mamba_ssm():
    policy = tiny("mamba")
    assert {k: tuple(v.shape) for k, v in policy.state_dict().items()} == MAMBA_SSM_KEYS
    assert policy.lm_head.weight is policy.backbone.embedding.weight
    assert policy.backbone.layers[0].mixer.A_log.dtype == torch.float32


def test_mamba_init_follows_mamba_ssm():
    mixer = tiny("mamba").backbone.layers[0].mixer
    delta = F.softplus(mixer.dt_proj.bias)
    assert 1e-3 <= delta.min() and delta.max() <= 1e-1
    torch.testing.assert_close(-torch.exp(mixer.A_log[3]), -torch.arange(1.0, 17.0))
    assert (mixer.D == 1).all()


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_mamba_step_sees_loaded_weights(kind):
    """step caches A = -exp(A_log); loading new weights must not leave it stale."""
    policy, other, token = tiny(kind, seed=0), tiny(kind, seed=1), tokens(2, 1)[:, 0]
    with torch.no_grad():
        for layer in other.backbone.layers:
            layer.mixer.A_log.add_(0.5)
        policy.step(token, policy.init_state(2))  # fills the cache with the old A
        policy.load_state_dict(other.state_dict())
        expected = other.step(token, other.init_state(2))
        torch.testing.assert_close(policy.step(token, policy.init_state(2)), expected)


def test_mamba_dt_rank_auto_is_written_into_the_config():
    config = MambaConfig(vocab_size=VOCAB, d_model=40)
    assert config.dt_rank == 3
    assert MambaConfig.model_validate(config.model_dump()) == config


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="mamba, mamba2, transformer, lstm, gru, lookup"):
        build_policy({"kind": "lstm9", "vocab_size": VOCAB})
    assert set(POLICY_CONFIGS) == {case["kind"] for case in CASES.values()} | {"lookup"}


@pytest.mark.parametrize("config_class", [MambaConfig, Mamba2Config, TransformerConfig, LSTMConfig, GRUConfig, LookupConfig])
def test_configs_reject_unknown_fields(config_class):
    with pytest.raises(pydantic.ValidationError):
        config_class(vocab_size=VOCAB, k=7, d_modle=64)
    with pytest.raises(pydantic.ValidationError):
        build_policy({"kind": config_class.model_fields["kind"].default, "vocab_size": VOCAB, "k": 7, "bogus": 1})


def test_transformer_config_checks_heads():
    with pytest.raises(pydantic.ValidationError, match="divide"):
        TransformerConfig(vocab_size=VOCAB, d_model=30, n_head=4)


@pytest.mark.parametrize("kind", KINDS)
def test_build_from_config_object_and_every_field_documented(kind):
    config = POLICY_CONFIGS[CASES[kind]["kind"]](vocab_size=VOCAB, **CASES[kind])
    assert build_policy(config).config == config
    assert all(field.description for field in type(config).model_fields.values())


# Measured at vocab_size 280 (the project's vocabulary); shipped Mamba: 0.5M.
DEFAULT_PARAMETERS = {"mamba": 502_400, "mamba2": 508_128, "lstm": 472_600, "gru": 497_688}


@pytest.mark.parametrize("kind", DEFAULT_PARAMETERS)
def test_default_sizes_match_the_stated_parameter_counts(kind):
    assert build_policy({"kind": kind, "vocab_size": 280}).num_parameters() == DEFAULT_PARAMETERS[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_flow(kind):
    policy, seq = tiny(kind).train(), tokens(2, 16)
    logits = policy(seq[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten()).backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_under_inference_mode_leaves_the_policy_trainable(kind):
    """The runtime decodes under torch.inference_mode between training steps."""
    policy, seq = tiny(kind), tokens(1, 200)
    with torch.inference_mode():
        state = policy.init_state(1)
        policy(seq[:, :150], state)
        for t in range(150, 200):  # past the lengths seen so far: the Transformer extends its RoPE table
            policy.step(seq[:, t], state)
    policy(seq).sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_stepper_equals_forward_and_resets_one_row(kind):
    """Each policy's runtime stepper (Mamba's on the CPU: NumPy with prepared weights) gives the
    parallel forward's logits through prefill and step; a row reset starts that row afresh."""
    policy, seq = tiny(kind), tokens(3, 40)
    with torch.no_grad():
        full = policy(seq)  # (3, 40, VOCAB)
        stepper = auto_stepper(policy, 3)
        got = [stepper.prefill(seq[:, :10])]
        got += [stepper.logits(seq[:, t]).clone() for t in range(10, 40)]
        torch.testing.assert_close(torch.stack(got, dim=1), full[:, 9:], atol=ATOL, rtol=0)
        if kind.startswith("transformer"):
            with pytest.raises(NotImplementedError):
                stepper.reset_row(1)  # every row shares the cache's positions
            return
        stepper.reset_row(1)
        fresh = policy(seq[1:2, :5])[0]  # (5, VOCAB): row 1's tokens from an empty history
        steps = torch.stack([stepper.logits(seq[:, t])[1].clone() for t in range(5)])
    torch.testing.assert_close(steps, fresh, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_mamba_numpy_stepper_prefills_after_any_number_of_steps(kind):
    """The NumPy stepper keeps the conv state as a ring between prefills (a step writes over the
    oldest input); a prefill after 1, 2, ... steps puts it back in order and continues exactly."""
    policy, seq = tiny(kind), tokens(2, 40)
    with torch.no_grad():
        full = policy(seq)
        stepper = auto_stepper(policy, 2)
        t, got, want = 3, [stepper.prefill(seq[:, :3]).clone()], [full[:, 2]]
        for steps in (1, 2, 3, 4, 5, 6):  # every ring position, with d_conv 4
            for _ in range(steps):
                got.append(stepper.logits(seq[:, t]).clone())
                want.append(full[:, t])
                t += 1
            got.append(stepper.prefill(seq[:, t : t + 2]).clone())
            want.append(full[:, t + 1])
            t += 2
    torch.testing.assert_close(torch.stack(got), torch.stack(want), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_stepper_greedy_is_the_argmax_of_its_logits(kind):
    """greedy may skip work that does not change the argmax (the CPU Mamba skips the final
    norm's scale); it must pick what the logits pick, row by row, as the state goes on."""
    policy, seq = tiny(kind), tokens(3, 12)
    with torch.no_grad():
        a, b = auto_stepper(policy, 3), auto_stepper(policy, 3)
        a.prefill(seq[:, :4]), b.prefill(seq[:, :4])
        for t in range(4, 12):
            assert b.greedy(seq[:, t]).tolist() == a.logits(seq[:, t]).argmax(-1).tolist()


def test_the_cpu_steps_chosen():
    """On the CPU both Mambas step in NumPy, every other policy through its own step."""
    from mamba_agent.policies.mamba_cpu import Numpy2Stepper, NumpyStepper

    assert isinstance(auto_stepper(tiny("mamba"), 1), NumpyStepper)
    assert isinstance(auto_stepper(tiny("mamba2"), 1), Numpy2Stepper)
    for kind in ("transformer", "gru"):
        assert choose_step(tiny(kind), "cpu", tensor_rows=True) == "reference"
