"""Gateway chains in YAML: instances, per-backend chains, plug-ins and events."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from gateway.app import audit_config
from gateway.audit.config import StdoutSinkConfig
from gateway.chains import plan_backend_chains, stage_event_types
from gateway.config import GatewayConfig, load_config_text
from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.events import GatewayEvent
from gateway.mcp.response import GatewayResponse
from pipeline import BaseStage, Event
from tests.fixtures.dist_info import install_example_package, write_dist_info

HERE = "tests.unit.config.test_stage_instances"

BASE = """
server: {{public_url: "http://127.0.0.1:8000"}}
upstream: {{issuer: "http://127.0.0.1:9000", client_id: gw, client_secret: s}}
backends:
  employees:
    path: /employees/mcp
    url: http://127.0.0.1:8001/mcp
    auth: {{kind: static-key, value: k1}}
{employees_pipeline}
  partners:
    path: /partners/mcp
    url: http://127.0.0.1:8002/mcp
    auth: {{kind: static-key, value: k2}}
"""


def config_of(extra: str, employees_chain: str | None = None) -> GatewayConfig:
    own = f"    pipeline: {employees_chain}" if employees_chain else ""
    text = BASE.format(employees_pipeline=own) + extra
    return load_config_text(text, source="test.yaml")


def problems_of(extra: str, employees_chain: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(config_of(extra, employees_chain))
    return raised.value.problems


def refs_of(extra: str, backend: str = "partners") -> list[str]:
    plans, _ = plan_backend_chains(config_of(extra))
    return [d.ref for d in plans[backend].plan.declarations]


class ThrottleEvent(Event, frozen=True, kw_only=True):
    """An event that is not a gateway event."""


class AccessDenied(GatewayEvent, frozen=True, kw_only=True):
    """A custom event whose type is the type of a built-in event.

    Marked abstract so that the tagged unions that other tests build never
    contain two classes with one tag, which msgspec rejects.
    """

    __abstract_event__: ClassVar[bool] = True


class QuotaUsed(GatewayEvent, frozen=True, kw_only=True):
    """A custom gateway event."""

    remaining: int


class PlainEventStage(BaseStage[RequestContext, GatewayResponse]):
    events: ClassVar[tuple[type[Event], ...]] = (ThrottleEvent,)


class ClashingEventStage(BaseStage[RequestContext, GatewayResponse]):
    events: ClassVar[tuple[type[Event], ...]] = (AccessDenied,)


class QuotaStage(BaseStage[RequestContext, GatewayResponse]):
    events: ClassVar[tuple[type[Event], ...]] = (QuotaUsed,)


# Instances -------------------------------------------------------------------


def test_instances_keep_own_settings_per_chain() -> None:
    """Two authorize instances in two chains each get their own settings."""
    config = config_of(
        "pipeline: [audit, authenticate, identify_agent, authorize/lenient, "
        "exchange, session, forward]\n"
        "stages:\n"
        "  authorize/lenient: {filter_tools_list: false}\n"
        "  authorize/strict: {require_verified_agent: [employees]}\n",
        employees_chain="[audit, authenticate, identify_agent, authorize/strict, "
        "exchange, session, forward]",
    )
    plans, _ = plan_backend_chains(config)
    lenient = plans["partners"].plan.declarations[3]
    strict = plans["employees"].plan.declarations[3]
    assert (lenient.ref, lenient.type_name, lenient.instance) == (
        "authorize/lenient",
        "authorize",
        "lenient",
    )
    assert lenient.settings.filter_tools_list is False  # type: ignore[attr-defined]
    assert strict.ref == "authorize/strict"
    assert strict.settings.filter_tools_list is True  # type: ignore[attr-defined]
    assert strict.settings.require_verified_agent == ["employees"]  # type: ignore[attr-defined]
    assert plans["employees"].source == "backends.employees.pipeline"
    assert plans["partners"].source == "pipeline"


def test_instance_bad_setting_carries_yaml_path() -> None:
    """A bad value in an instance's settings is reported under its full path."""
    problems = problems_of(
        "pipeline: [audit, authenticate, identify_agent, authorize/strict, "
        "exchange, session, forward]\n"
        "stages:\n"
        "  authorize/strict: {tool_scopes: {partners: read-only}}\n"
    )
    assert problems == [
        "stages.authorize/strict.tool_scopes.partners: Expected `object`, got `str`"
    ]


def test_instance_unknown_setting_rejected() -> None:
    """A misspelt key in an instance's settings is reported."""
    problems = problems_of(
        "pipeline: [audit, authenticate, identify_agent, authorize/strict, "
        "exchange, session, forward]\n"
        "stages:\n"
        "  authorize/strict: {tool_scops: {}}\n"
    )
    assert problems == [
        "stages.authorize/strict: Object contains unknown field `tool_scops`"
    ]


def test_instance_settings_unused_rejected() -> None:
    """Settings for an instance that no chain runs are reported."""
    problems = problems_of("stages:\n  authorize/spare: {}\n")
    assert problems == [
        "stages.authorize/spare: settings for a stage that no chain uses; add "
        "'authorize/spare' to a pipeline or remove these settings"
    ]


def test_instance_duplicated_in_chain_rejected() -> None:
    """One instance listed twice in a chain is reported."""
    problems = problems_of(
        "pipeline: [audit, authenticate, identify_agent, authorize/a, authorize/a, "
        "exchange, session, forward]\n"
    )
    assert problems == [
        'pipeline[4]: stage "authorize/a" appears twice (first at pipeline[3]); '
        "remove one of them, or give each its own instance name, such as "
        '"authorize/second"'
    ]


def test_instance_bad_name_in_backend_chain_rejected() -> None:
    """A bad instance name in a backend's own chain is reported at its path."""
    problems = problems_of(
        "",
        employees_chain="[audit, authenticate, identify_agent, authorize/Strict!, "
        "exchange, session, forward]",
    )
    assert problems[0].startswith(
        "backends.employees.pipeline[3]: invalid instance name 'Strict!' in "
        "'authorize/Strict!'"
    )


def test_policy_of_instance_not_run_by_backend_rejected() -> None:
    """A policy naming a backend whose chain runs another instance is reported."""
    problems = problems_of(
        "pipeline: [audit, authenticate, identify_agent, authorize/lenient, "
        "exchange, session, forward]\n"
        "stages:\n"
        "  authorize/strict: {require_verified_agent: [partners]}\n",
        employees_chain="[audit, authenticate, identify_agent, authorize/strict, "
        "exchange, session, forward]",
    )
    assert problems == [
        "stages.authorize/strict.require_verified_agent: backend 'partners' does "
        "not run 'authorize/strict', so this setting would never apply; add "
        "'authorize/strict' to its chain or move the setting to the authorize "
        "stage it runs"
    ]


def test_audit_instance_settings_configure_sinks() -> None:
    """The sinks may be set on an audit instance such as ``audit/main``."""
    config = config_of(
        "pipeline: [audit/main, authenticate, identify_agent, authorize, "
        "exchange, session, forward]\n"
        "stages:\n"
        "  audit/main: {sinks: [{kind: stdout}]}\n"
    )
    plan_backend_chains(config)
    assert audit_config(config).sinks == [StdoutSinkConfig()]


def test_audit_sinks_on_two_instances_rejected() -> None:
    """Sink settings on two audit instances are reported: sinks serve every chain."""
    problems = problems_of(
        "pipeline: [audit/a, authenticate, identify_agent, authorize, "
        "exchange, session, forward]\n"
        "stages:\n"
        "  audit/a: {sinks: [{kind: stdout}]}\n"
        "  audit/b: {sinks: [{kind: jsonl}]}\n",
        employees_chain="[audit/b, authenticate, identify_agent, authorize, "
        "exchange, session, forward]",
    )
    assert problems == [
        "stages.audit/b: the audit sinks are already set under stages.audit/a; "
        "they receive the events of every chain, so set them under one audit "
        "instance only and remove these settings"
    ]


# Reordering, adding and removing stages ------------------------------------


def test_chain_reordered_valid_order_kept() -> None:
    """A valid reordering is planned exactly as written."""
    chain = [
        "audit",
        "authenticate",
        "identify_agent",
        "session",
        "authorize",
        "exchange",
        "forward",
    ]
    assert refs_of(f"pipeline: [{', '.join(chain)}]\n") == chain


def test_chain_added_stage_planned_in_place() -> None:
    """An added stage is planned where the YAML puts it."""
    ref = f"{HERE}:QuotaStage"
    chain = ["audit", "authenticate", ref, "identify_agent", "authorize"]
    chain += ["exchange", "session", "forward"]
    assert refs_of(f"pipeline: [{', '.join(chain)}]\n") == chain


def test_chain_without_session_accepted() -> None:
    """``session`` is optional: no later stage requires ``backend_session``."""
    chain = "[audit, authenticate, identify_agent, authorize, exchange, forward]"
    assert "session" not in refs_of(f"pipeline: {chain}\n")


def test_chain_without_audit_warns() -> None:
    """A chain without any audit instance is accepted with a warning."""
    chain = "[authenticate, identify_agent, authorize, exchange, session, forward]"
    _, warnings = plan_backend_chains(config_of(f"pipeline: {chain}\n"))
    assert warnings == [
        'pipeline: the chain has no "audit" stage, so its requests are not '
        'audited; add "audit" as the first stage'
    ]


def test_chain_with_audit_instance_no_warning() -> None:
    """An audit instance counts as the audit stage."""
    chain = "[audit/x, authenticate, identify_agent, authorize, exchange, forward]"
    _, warnings = plan_backend_chains(config_of(f"pipeline: {chain}\n"))
    assert warnings == []


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        (
            "authenticate",
            [
                'pipeline[1]: stage "identify_agent" requires "principal", which '
                'no stage before it provides; add "authenticate" before it',
                'pipeline[2]: stage "authorize" requires "principal", which no '
                'stage before it provides; add "authenticate" before it',
                'pipeline[3]: stage "exchange" requires "principal", which no '
                'stage before it provides; add "authenticate" before it',
                'pipeline[4]: stage "session" requires "principal", which no '
                'stage before it provides; add "authenticate" before it',
                'pipeline[5]: stage "forward" requires "principal", which no '
                'stage before it provides; add "authenticate" before it',
            ],
        ),
        (
            "authorize",
            [
                'pipeline[3]: stage "exchange" requires "decision", which no stage '
                'before it provides; add "authorize" before it',
                'pipeline[5]: stage "forward" requires "decision", which no stage '
                'before it provides; add "authorize" before it',
            ],
        ),
        (
            "exchange",
            [
                'pipeline[5]: stage "forward" requires "backend_credentials", '
                'which no stage before it provides; add "exchange" before it',
            ],
        ),
    ],
)
def test_chain_without_security_stage_rejected(
    removed: str, expected: list[str]
) -> None:
    """``forward`` requires what authenticate, authorize and exchange provide."""
    chain = ["audit", "authenticate", "identify_agent", "authorize", "exchange"]
    chain += ["session", "forward"]
    chain.remove(removed)
    assert problems_of(f"pipeline: [{', '.join(chain)}]\n") == expected


def test_anonymous_backend_without_security_stages_accepted() -> None:
    """An anonymous backend's chain needs none of the security stages."""
    text = BASE.format(
        employees_pipeline="    anonymous: true\n    pipeline: [audit, forward]"
    ).replace("auth: {kind: static-key, value: k1}", "auth: {kind: none}")
    plans, _ = plan_backend_chains(load_config_text(text, source="test.yaml"))
    assert [d.ref for d in plans["employees"].plan.declarations] == [
        "audit",
        "forward",
    ]


# Custom stage events ----------------------------------------------------------


def test_custom_events_collected_from_chains() -> None:
    """The event classes that custom stages declare are collected once each."""
    ref = f"{HERE}:QuotaStage"
    plans, _ = plan_backend_chains(
        config_of(
            f"pipeline: [audit, authenticate, {ref}, identify_agent, authorize, "
            "exchange, session, forward]\n"
        )
    )
    assert stage_event_types(plans.values()) == [QuotaUsed]


def test_custom_event_not_gateway_event_rejected() -> None:
    """A declared event that is not a GatewayEvent is reported."""
    ref = f"{HERE}:PlainEventStage"
    problems = problems_of(
        f"pipeline: [audit, authenticate, {ref}, identify_agent, authorize, "
        "exchange, session, forward]\n"
    )
    assert problems == [
        f"pipeline[2]: stage '{ref}' declares the event {HERE}.ThrottleEvent, "
        "which does not derive from gateway.events.GatewayEvent; derive it from "
        "GatewayEvent so that it carries the common audit fields"
    ]


def test_custom_event_reusing_builtin_type_rejected() -> None:
    """A declared event whose type tag is a built-in event's is reported."""
    ref = f"{HERE}:ClashingEventStage"
    problems = problems_of(
        f"pipeline: [audit, authenticate, {ref}, identify_agent, authorize, "
        "exchange, session, forward]\n"
    )
    assert problems == [
        f"pipeline[2]: stage '{ref}' declares the event {HERE}.AccessDenied, "
        "whose type 'AccessDenied' is already the type of "
        "gateway.events.AccessDenied (declared by the gateway); rename the class "
        "or set its tag"
    ]


# Entry-point plug-ins -----------------------------------------------------------


def test_example_package_stage_found_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example package's ``change_freeze`` is usable by its entry-point name."""
    install_example_package(tmp_path, monkeypatch)
    from agent_proxy_change_freeze import ChangeFreezeStage, ToolCallFrozen

    plans, _ = plan_backend_chains(
        config_of(
            "pipeline: [audit, authenticate, identify_agent, authorize, "
            "change_freeze, exchange, session, forward]\n"
            "stages:\n  change_freeze: {tools: [update_*]}\n"
        )
    )
    declaration = plans["partners"].plan.declarations[4]
    assert declaration.cls is ChangeFreezeStage
    assert declaration.settings.tools == ["update_*"]  # type: ignore[attr-defined]
    assert str(declaration.origin) == (
        "entry point change_freeze = agent_proxy_change_freeze:ChangeFreezeStage "
        "(distribution 'agent-proxy-change-freeze 0.1.0')"
    )
    assert stage_event_types(plans.values()) == [ToolCallFrozen]


def test_example_package_stage_after_exchange_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plug-in's ``before`` constraint applies in the gateway's chains."""
    install_example_package(tmp_path, monkeypatch)
    problems = problems_of(
        "pipeline: [audit, authenticate, identify_agent, authorize, exchange, "
        "change_freeze, session, forward]\n"
    )
    assert problems == [
        'pipeline[5]: stage "change_freeze" must come before "exchange" '
        '(pipeline[4]), because its class declares before "exchange"; move '
        '"change_freeze" above "exchange"'
    ]


def test_plugin_named_like_builtin_fails_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed plug-in that takes a built-in name is a config error."""
    write_dist_info(
        tmp_path,
        "shadow-stages",
        "1.0",
        {"agent_proxy.stages": {"authorize": f"{HERE}:QuotaStage"}},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = problems_of("")
    assert problems == [
        "agent_proxy.stages: entry point 'authorize' of distribution "
        "'shadow-stages 1.0' uses the name of a built-in stage, 'authorize'; "
        "rename the entry point or uninstall the package"
    ]


def test_anonymous_backend_with_credential_rejected() -> None:
    """An anonymous backend must not be given a credential."""
    own = "    anonymous: true\n    pipeline: [audit, forward]"
    text = BASE.format(employees_pipeline=own)
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(load_config_text(text, source="test.yaml"))
    assert raised.value.problems == [
        "backends.employees.auth: an anonymous backend must not get a credential; "
        "set auth.kind to none or remove anonymous: true"
    ]
