"""Policies (the models) behind one interface, built from a config by its `kind`."""

from mamba_agent.policies.base import Policy, PolicyConfig
from mamba_agent.policies.lookup import LookupConfig, LookupPolicy, fit_lookup
from mamba_agent.policies.mamba import MambaConfig, MambaPolicy, MambaState
from mamba_agent.policies.rnn import GRUConfig, LSTMConfig, RNNPolicy, RNNState
from mamba_agent.policies.transformer import KVCache, TransformerConfig, TransformerPolicy

POLICY_CONFIGS: dict[str, type[PolicyConfig]] = {
    "mamba": MambaConfig,
    "transformer": TransformerConfig,
    "lstm": LSTMConfig,
    "gru": GRUConfig,
    "lookup": LookupConfig,
}
_POLICIES: dict[str, type[Policy]] = {
    "mamba": MambaPolicy,
    "transformer": TransformerPolicy,
    "lstm": RNNPolicy,
    "gru": RNNPolicy,
    "lookup": LookupPolicy,
}


def build_policy(config: dict | PolicyConfig) -> Policy:
    """A freshly initialized policy of `config["kind"]`; the config is validated by that kind's class.

    Raises:
        ValueError: unknown kind (the message lists the valid ones).
        pydantic.ValidationError: a bad or unknown field.
    """
    if isinstance(config, PolicyConfig):
        config = config.model_dump()
    kind = config.get("kind")
    if kind not in POLICY_CONFIGS:
        raise ValueError(f"unknown policy kind {kind!r}; valid kinds: {', '.join(POLICY_CONFIGS)}")
    return _POLICIES[kind](POLICY_CONFIGS[kind].model_validate(config))


__all__ = [
    "POLICY_CONFIGS",
    "GRUConfig",
    "KVCache",
    "LSTMConfig",
    "LookupConfig",
    "LookupPolicy",
    "MambaConfig",
    "MambaPolicy",
    "MambaState",
    "Policy",
    "PolicyConfig",
    "RNNPolicy",
    "RNNState",
    "TransformerConfig",
    "TransformerPolicy",
    "build_policy",
    "fit_lookup",
]
