"""Configuration: the frozen model of the contract (model), its loader (loader: YAML, environment,
validation with pydantic) and the child-process loading of the running agent (isolated)."""

from agent.config.model import Config, ConfigError

__all__ = ["Config", "ConfigError"]
