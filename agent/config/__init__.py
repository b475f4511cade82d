"""Configuration: the frozen model of the contract and its loader."""

from agent.config.loader import ConfigError, load_config
from agent.config.model import Config

__all__ = ["Config", "ConfigError", "load_config"]
