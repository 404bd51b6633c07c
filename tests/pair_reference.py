"""The reference for a step that reads two tokens a row (SplitStepKernel.greedy_pair, tensor rows'
pairs): two steps of policy.step, the second kept only for the rows that read two."""

import torch


def step_pair(policy, feed, n_feed, state):
    """Logits after row b reads feed[:n_feed[b], b]; the state after it, in place. feed (2, B)."""
    first = policy.step(feed[0], state)
    conv, ssm = state.conv.clone(), state.ssm.clone()
    second = policy.step(feed[1], state)
    two = n_feed == 2
    state.conv.copy_(torch.where(two[None, :, None, None], state.conv, conv))
    state.ssm.copy_(torch.where(two[None, :, None, None], state.ssm, ssm))
    return torch.where(two[:, None], second, first)
