"""Gateway configuration: typed Structs loaded from YAML."""

from gateway.config.loader import ConfigError, load_config, load_config_text
from gateway.config.model import (
    AgentConfig,
    BackendAuth,
    BackendConfig,
    BasicAuth,
    GatewayConfig,
    IdJagAuth,
    NoAuth,
    ServerConfig,
    SigningConfig,
    StaticKeyAuth,
    ToolRules,
    UpstreamConfig,
)

__all__ = [
    "AgentConfig",
    "BackendAuth",
    "BackendConfig",
    "BasicAuth",
    "ConfigError",
    "GatewayConfig",
    "IdJagAuth",
    "NoAuth",
    "ServerConfig",
    "SigningConfig",
    "StaticKeyAuth",
    "ToolRules",
    "UpstreamConfig",
    "load_config",
    "load_config_text",
]
