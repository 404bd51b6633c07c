"""Policies (the models) behind one interface, built from a config by its `kind`.

A kind is a built-in one (below), `module:Name`, or an installed plugin's entry point (group
`mamba_agent.policies`; see mamba_agent.plugins): a subclass of `Policy` whose `Config` attribute
is its PolicyConfig subclass (docs/extending.md).
"""

from mamba_agent import plugins
from mamba_agent.policies.base import Policy, PolicyConfig
from mamba_agent.policies.lookup import LookupConfig, LookupPolicy, fit_lookup
from mamba_agent.policies.mamba import MambaConfig, MambaPolicy, MambaState
from mamba_agent.policies.mamba2 import Mamba2Config, Mamba2Policy, Mamba2State
from mamba_agent.policies.rnn import GRUConfig, LSTMConfig, RNNPolicy, RNNState
from mamba_agent.policies.transformer import KVCache, TransformerConfig, TransformerPolicy

POLICY_CONFIGS: dict[str, type[PolicyConfig]] = {
    "mamba": MambaConfig,
    "mamba2": Mamba2Config,
    "transformer": TransformerConfig,
    "lstm": LSTMConfig,
    "gru": GRUConfig,
    "lookup": LookupConfig,
}
_POLICIES: dict[str, type[Policy]] = {
    "mamba": MambaPolicy,
    "mamba2": Mamba2Policy,
    "transformer": TransformerPolicy,
    "lstm": RNNPolicy,
    "gru": RNNPolicy,
    "lookup": LookupPolicy,
}


def policy_classes(kind: str) -> tuple[type[Policy], type[PolicyConfig]]:
    """(policy class, config class) of `kind`, a built-in kind or a plugin's name.

    Raises:
        ValueError: unknown kind (the message lists the valid ones).
        plugins.PluginError (a ValueError): a plugin that does not import or lacks the interface.
    """
    if kind in POLICY_CONFIGS:
        return _POLICIES[kind], POLICY_CONFIGS[kind]
    cls = plugins.load("policy", kind, POLICY_CONFIGS)
    plugins.check_class("policy", kind, cls, Policy)
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, PolicyConfig)):
        raise plugins.PluginError(f"policy plugin {kind!r}: {cls.__name__}.Config must be its PolicyConfig subclass, got {config!r}")
    return cls, config


def build_policy(config: dict | PolicyConfig) -> Policy:
    """A freshly initialized policy of `config["kind"]`; the config is validated by that kind's class.

    Raises:
        ValueError: unknown kind (the message lists the valid ones), or a plugin that cannot be used.
        pydantic.ValidationError: a bad or unknown field.
    """
    if isinstance(config, PolicyConfig):
        config = config.model_dump()
    cls, config_class = policy_classes(config.get("kind"))
    return cls(config_class.model_validate(config))


__all__ = [
    "POLICY_CONFIGS",
    "GRUConfig",
    "KVCache",
    "LSTMConfig",
    "LookupConfig",
    "LookupPolicy",
    "Mamba2Config",
    "Mamba2Policy",
    "Mamba2State",
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
    "policy_classes",
    "fit_lookup",
]
