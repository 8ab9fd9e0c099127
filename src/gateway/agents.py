"""Agent identity and policy: which agent a client is and what it may do."""

from __future__ import annotations

from fnmatch import fnmatchcase

from gateway.config import AgentConfig, GatewayConfig, ToolRules
from gateway.facts import AgentIdentity, TrustLevel

DEFAULT_AGENT = "default"


class AgentResolver:
    """Maps OAuth clients to configured agents and answers policy questions.

    Policy is read from the config on every call, so a reloaded config applies
    to tokens issued before it.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config

    def identify(
        self, *, client_id: str, client_name: str | None, authenticated: bool = False
    ) -> AgentIdentity:
        """Return the agent a client is.

        A client listed by id in ``agents.<name>.match.client_ids`` is
        ``verified`` when ``authenticated`` is set, that is when the client
        proves its identity (see ``ClientRecord.identity_proven``: a
        confidential pre-registered client, or a metadata document with https
        redirect URIs on its own host), and ``self-asserted`` otherwise. A
        match on the ``client_name`` is ``self-asserted``; no match gives the
        ``default`` agent with trust ``unknown``.
        """
        for name, agent in self.config.agents.items():
            if client_id in agent.match.client_ids:
                trust: TrustLevel = "verified" if authenticated else "self-asserted"
                return AgentIdentity(
                    id=name, verified=authenticated, trust=trust, client_id=client_id
                )
        for name, agent in self.config.agents.items():
            if (
                agent.match.client_name is not None
                and agent.match.client_name == client_name
            ):
                return AgentIdentity(
                    id=name, verified=False, trust="self-asserted", client_id=client_id
                )
        return AgentIdentity(
            id=DEFAULT_AGENT, verified=False, trust="unknown", client_id=client_id
        )

    def _policy(self, agent_id: str) -> tuple[list[str], dict[str, ToolRules]]:
        agent: AgentConfig | None = self.config.agents.get(agent_id)
        if agent is None:
            default = self.config.default_agent
            return default.backends, default.tools
        return agent.backends, agent.tools

    def allows_backend(self, agent_id: str, backend: str) -> bool:
        """Return whether the agent may use the backend at all."""
        backends, _ = self._policy(agent_id)
        return "*" in backends or backend in backends

    def check_tool(self, agent_id: str, backend: str, tool: str) -> tuple[bool, str]:
        """Return whether the agent may call the tool, and the rule that decided.

        The rule is a readable string such as ``agents.claude-code.tools.
        employees.deny["update_*"]``, used in denial messages and audit events.
        """
        _, tools = self._policy(agent_id)
        where = (
            f"agents.{agent_id}" if agent_id in self.config.agents else "default_agent"
        )
        rules = tools.get(backend)
        if rules is None:
            return True, f"{where}: no tool rules for {backend}"
        for pattern in rules.deny:
            if fnmatchcase(tool, pattern):
                return False, f"{where}.tools.{backend}.deny[{pattern!r}]"
        for pattern in rules.allow:
            if fnmatchcase(tool, pattern):
                return True, f"{where}.tools.{backend}.allow[{pattern!r}]"
        return False, f"{where}.tools.{backend}.allow (no pattern matches)"
