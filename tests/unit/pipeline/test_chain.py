"""Chain building, validation messages, execution and spans."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import ChainConfigError, StageRegistry, build_chain, plan_chain
from pipeline import chain as chain_module

from .stages_for_tests import Recorder, registry_stages

CUSTOM = "tests.unit.pipeline.stages_for_tests:Stamp"


def registry() -> StageRegistry:
    return StageRegistry(registry_stages())


def problems_of(refs: list[str], settings: dict | None = None) -> list[str]:
    with pytest.raises(ChainConfigError) as info:
        plan_chain(refs, registry(), settings or {})
    return info.value.problems


@pytest.mark.anyio
async def test_chain_runs_stages_outermost_first() -> None:
    """Stages run in declared order and see each other's response."""
    plan = plan_chain(["login", "policy", "send"], registry(), {})
    chain = build_chain(plan, resources=None)
    ctx = Recorder()
    assert await chain(ctx) == "SENT FOR ALICE"
    assert ctx.trail == ["login", "policy", "send"]


@pytest.mark.anyio
async def test_chain_stage_short_circuits() -> None:
    """A stage that returns its own response stops the later stages."""
    plan = plan_chain(
        ["login", "policy", "send"], registry(), {"policy": {"deny": ["alice"]}}
    )
    ctx = Recorder()
    assert await build_chain(plan, resources=None)(ctx) == "denied"
    assert ctx.trail == ["login", "policy"]


@pytest.mark.anyio
async def test_chain_custom_stage_runs_in_place() -> None:
    """A ``module:Class`` reference loads and runs where it is listed."""
    plan = plan_chain(["login", CUSTOM, "policy", "send"], registry(), {})
    ctx = Recorder()
    await build_chain(plan, resources=None)(ctx)
    assert ctx.trail == ["login", CUSTOM, "policy", "send"]


def test_plan_unknown_stage_lists_known() -> None:
    """An unknown name is reported with every known stage name."""
    (problem,) = problems_of(["login", "polcy", "policy", "send"])
    assert problem.startswith("pipeline[1]: unknown stage 'polcy'")
    assert "known stages: broken, login, policy, send" in problem


def test_plan_missing_requirement_names_both_stages() -> None:
    """A stage before its provider is reported with the fix."""
    (problem,) = problems_of(["policy", "login", "send"])
    assert problem == (
        'pipeline[0]: stage "policy" requires "principal", which no stage before '
        'it provides; put "login" before it'
    )


def test_plan_missing_provider_suggests_adding_it() -> None:
    """A requirement nobody in the chain provides suggests the registered provider."""
    problems = problems_of(["policy", "send"])
    assert problems[0].endswith('add "login" before it')


def test_plan_duplicate_reported() -> None:
    """A stage listed twice is reported at its second position."""
    problems = problems_of(["login", "policy", "login", "send"])
    assert problems == [
        'pipeline[2]: stage "login" appears twice (first at pipeline[0]); '
        "remove one of them, or give each its own instance name, such as "
        '"login/second"'
    ]


def test_plan_without_terminal_rejected() -> None:
    """A chain must end with a terminal stage."""
    (problem,) = problems_of(["login", "policy"])
    assert "no terminal stage" in problem
    assert 'end it with "send"' in problem


def test_plan_terminal_not_last_rejected() -> None:
    """Nothing may follow a terminal stage."""
    problems = problems_of(["login", "policy", "send", CUSTOM])
    assert any('pipeline[2]: stage "send" is terminal' in p for p in problems)


def test_plan_reports_every_problem_at_once() -> None:
    """All problems of one chain are listed together."""
    problems = problems_of(["nope", "policy", "policy", "login"], {"ghost": {}})
    assert len(problems) == 5
    assert problems[0].startswith("pipeline[0]: unknown stage")
    assert any("appears twice" in p for p in problems)
    assert any('requires "principal"' in p for p in problems)
    assert any("no terminal stage" in p for p in problems)
    assert any(p.startswith("stages.ghost:") for p in problems)


def test_plan_bad_settings_name_yaml_path() -> None:
    """Settings are validated against the stage's Config Struct."""
    (problem,) = problems_of(["login", "policy", "send"], {"policy": {"deny": "bob"}})
    assert problem == "stages.policy.deny: Expected `array`, got `str`"


def test_plan_bad_import_reference() -> None:
    """A ``module:Class`` that cannot be imported is reported, not raised."""
    problems = problems_of(["login", "no.such.module:Stage", "policy", "send"])
    assert problems[0].startswith("pipeline[1]: cannot import module 'no.such.module'")


def test_plan_reference_to_non_stage_rejected() -> None:
    """A class without the stage attributes is not accepted."""
    ref = "tests.unit.pipeline.stages_for_tests:NotAStage"
    problems = problems_of(["login", ref, "policy", "send"])
    assert "is not a stage" in problems[0]


def test_plan_given_facts_satisfy_requirements() -> None:
    """Facts the host provides count as provided."""
    plan = plan_chain(
        ["policy", "send"], registry(), {}, given=frozenset({"principal"})
    )
    assert [d.ref for d in plan.declarations] == ["policy", "send"]


@pytest.mark.anyio
async def test_chain_one_span_per_stage_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stage runs in its own span, a child of the stage outside it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(chain_module, "_tracer", provider.get_tracer("test"))
    plan = plan_chain(["login", "policy", "send"], registry(), {})
    await build_chain(plan, resources=None)(Recorder())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"stage login", "stage policy", "stage send"}
    assert spans["stage policy"].parent.span_id == spans["stage login"].context.span_id
    assert spans["stage send"].parent.span_id == spans["stage policy"].context.span_id


@pytest.mark.anyio
async def test_chain_stage_error_recorded_on_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception marks the stage span as failed and propagates."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(chain_module, "_tracer", provider.get_tracer("test"))
    plan = plan_chain(["login", "broken", "policy", "send"], registry(), {})
    with pytest.raises(RuntimeError, match="stage failed"):
        await build_chain(plan, resources=None)(Recorder())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert not spans["stage broken"].status.is_ok
    assert spans["stage broken"].events[0].name == "exception"
