"""Validated configuration: schema (models), loading with precedence (loader),
plain error messages (messages, errors).

Public API::

    from agent.config import AgentConfig, ConfigError, load_config, EX_CONFIG
"""

from agent.config.errors import EX_CONFIG, ConfigError, ConfigIssue, Origin
from agent.config.loader import ENV_CONFIG_PATH, ENV_PREFIX, LoadedConfig, load_config
from agent.config.models import DEFAULT_CONFIG_PATH, AgentConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG_PATH",
    "ENV_PREFIX",
    "EX_CONFIG",
    "AgentConfig",
    "ConfigError",
    "ConfigIssue",
    "LoadedConfig",
    "Origin",
    "load_config",
]
