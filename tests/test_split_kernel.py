"""The split Mamba step (Triton: two kernels a layer, the matmuls over row blocks and the SSM over
(row, channel block)) against policy.step; in Triton's interpreter without a GPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when a kernel is defined: before the import below
triton = pytest.importorskip("triton")

from mamba_agent.checkpoint import load_checkpoint  # noqa: E402
from mamba_agent.policies import MambaConfig, build_policy  # noqa: E402
from mamba_agent.policies.mamba_split_kernel import SplitStepKernel  # noqa: E402
from mamba_agent.vocab import VOCAB_SIZE  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_policy(seed: int, **sizes):
    torch.manual_seed(seed)
    policy = build_policy(MambaConfig(vocab_size=VOCAB_SIZE, **sizes))
    with torch.no_grad():  # a trained model's Δ, D and conv are far from their initial values
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return policy.to(DEVICE)


@pytest.mark.parametrize("policy_of, tiles", [
    (lambda: load_checkpoint("builtin:addition-mamba", device=DEVICE)[0], {}),
    (lambda: random_policy(0, d_model=48, n_layer=2, d_state=16, dt_rank=5), dict(block_c=16, ssm_block_c=32)),
])
def test_same_logits_and_state_as_step(policy_of, tiles):
    policy = policy_of()
    B, steps = 19, 5
    kernel = SplitStepKernel(policy, **tiles)
    ref, state = policy.init_state(B), policy.init_state(B)
    g = torch.Generator().manual_seed(0)
    greedy = torch.empty(B, dtype=torch.int32, device=DEVICE)
    for t in range(steps):
        tokens = torch.randint(0, VOCAB_SIZE, (B,), generator=g).to(DEVICE)
        expected = policy.step(tokens, ref)
        if t % 2:
            torch.testing.assert_close(kernel(tokens, state), expected, rtol=1e-4, atol=1e-4)
        else:
            kernel.greedy(tokens, state, greedy)
            assert torch.equal(greedy.long(), expected.argmax(-1))
        torch.testing.assert_close(state.ssm, ref.ssm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state.conv, ref.conv, rtol=1e-4, atol=1e-5)
