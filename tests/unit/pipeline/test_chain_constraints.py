"""Ordering constraints, event declarations and settings checks of a chain plan."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import pytest

from pipeline import BaseStage, ChainConfigError, Event, StageRegistry, plan_chain

from .stages_for_tests import Recorder, registry_stages


class Throttle(BaseStage[Recorder, str]):
    """Must run after ``login`` and before ``policy`` when they are present."""

    after: ClassVar[frozenset[str]] = frozenset({"login"})
    before: ClassVar[frozenset[str]] = frozenset({"policy"})


class ThrottleNoted(Event, frozen=True, kw_only=True):
    limit: int


class NotAnEvent(msgspec.Struct):
    pass


class Noisy(BaseStage[Recorder, str]):
    events: ClassVar[tuple[type[Event], ...]] = (ThrottleNoted,)


class WrongEvents(BaseStage[Recorder, str]):
    events = (NotAnEvent,)  # type: ignore[assignment]


class StringBefore(BaseStage[Recorder, str]):
    before = "policy"  # type: ignore[assignment]


class Lenient(BaseStage[Recorder, str]):
    """Settings in a Struct that does not forbid unknown fields."""

    class Config(msgspec.Struct, frozen=True):
        limit: int = 10
        per_user: dict[str, int] = msgspec.field(default_factory=dict)


def registry() -> StageRegistry:
    return StageRegistry(
        {
            **registry_stages(),
            "throttle": Throttle,
            "noisy": Noisy,
            "wrong_events": WrongEvents,
            "string_before": StringBefore,
            "lenient": Lenient,
        }
    )


def problems_of(refs: list[str], settings: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ChainConfigError) as info:
        plan_chain(refs, registry(), settings or {})
    return info.value.problems


def test_order_constraints_satisfied_accepted() -> None:
    """A stage placed between its ``after`` and ``before`` types is accepted."""
    plan = plan_chain(["login", "throttle", "policy", "send"], registry(), {})
    assert [d.ref for d in plan.declarations] == ["login", "throttle", "policy", "send"]


def test_order_before_violated_names_both_positions() -> None:
    """A stage after a type it must precede is reported with both positions."""
    assert problems_of(["login", "policy", "throttle", "send"]) == [
        'pipeline[2]: stage "throttle" must come before "policy" (pipeline[1]), '
        'because its class declares before "policy"; move "throttle" above '
        '"policy"'
    ]


def test_order_after_violated_names_both_positions() -> None:
    """A stage before a type it must follow is reported with both positions."""
    problems = problems_of(["throttle", "login", "policy", "send"])
    assert problems == [
        'pipeline[0]: stage "throttle" must come after "login" (pipeline[1]), '
        'because its class declares after "login"; move "throttle" below "login"'
    ]


def test_order_constraint_on_absent_type_ignored() -> None:
    """A constraint naming a type the chain lacks constrains nothing."""
    plan = plan_chain(
        ["throttle", "send"], registry(), {}, given=frozenset({"principal", "decision"})
    )
    assert [d.ref for d in plan.declarations] == ["throttle", "send"]


def test_order_constraint_applies_to_instances() -> None:
    """A constraint naming a type applies to every instance of it."""
    problems = problems_of(["login", "policy/a", "throttle", "policy/b", "send"])
    assert problems == [
        'pipeline[2]: stage "throttle" must come before "policy/a" (pipeline[1]), '
        'because its class declares before "policy"; move "throttle" above '
        '"policy/a"'
    ]


def test_order_reordering_fixes_violation() -> None:
    """Moving the stage to the place the message names makes the chain valid."""
    with pytest.raises(ChainConfigError):
        plan_chain(["login", "policy", "throttle", "send"], registry(), {})
    plan = plan_chain(["login", "throttle", "policy", "send"], registry(), {})
    assert plan.declarations[1].ref == "throttle"


def test_events_declared_kept_on_class() -> None:
    """A stage's declared event classes are accepted and readable from the plan."""
    plan = plan_chain(["login", "noisy", "policy", "send"], registry(), {})
    assert plan.declarations[1].cls.events == (ThrottleNoted,)


def test_events_not_event_subclass_rejected() -> None:
    """An ``events`` entry that is not an Event subclass is reported."""
    [problem] = problems_of(["login", "wrong_events", "policy", "send"])
    assert problem.startswith("pipeline[1]: stage 'wrong_events' declares the event")
    assert problem.endswith("which is not a subclass of pipeline.Event")


def test_name_set_given_as_string_rejected() -> None:
    """``before`` written as one string instead of a set is reported."""
    [problem] = problems_of(["login", "string_before", "policy", "send"])
    assert problem == (
        "pipeline[1]: stage 'string_before' has an invalid 'before': class "
        "StringBefore must set it to a frozenset of strings, not 'policy'"
    )


def test_settings_unknown_key_rejected_without_forbid() -> None:
    """An unknown key is an error even when the Struct accepts unknown fields."""
    problems = problems_of(
        ["login", "lenient", "policy", "send"], {"lenient": {"limt": 5}}
    )
    assert problems == [
        "stages.lenient: unknown setting 'limt'; valid settings: limit, per_user"
    ]


def test_settings_error_names_mapping_key() -> None:
    """A bad value inside a mapping setting is reported under its key."""
    problems = problems_of(
        ["login", "lenient/eu", "policy", "send"],
        {"lenient/eu": {"per_user": {"alice": 3, "bob": "many"}}},
    )
    assert problems == ["stages.lenient/eu.per_user.bob: Expected `int`, got `str`"]


def test_settings_numbers_from_strings_accepted() -> None:
    """A number written as a string, as ``${VAR}`` values arrive, is accepted."""
    plan = plan_chain(
        ["login", "lenient", "policy", "send"], registry(), {"lenient": {"limit": "7"}}
    )
    assert plan.declarations[1].settings.limit == 7  # type: ignore[attr-defined]


def test_settings_unused_instance_rejected() -> None:
    """Settings for an instance that the chain does not contain are reported."""
    problems = problems_of(["login", "policy/a", "send"], {"policy/b": {}})
    assert problems == [
        "stages.policy/b: settings for a stage that is not in pipeline; add "
        "'policy/b' to pipeline or remove these settings"
    ]


def test_settings_of_type_not_inherited_by_instance() -> None:
    """``stages.policy`` does not configure ``policy/a``: it is unused there."""
    problems = problems_of(["login", "policy/a", "send"], {"policy": {"deny": ["x"]}})
    assert problems == [
        "stages.policy: settings for a stage that is not in pipeline; add "
        "'policy' to pipeline or remove these settings"
    ]


def test_duplicate_instance_rejected() -> None:
    """The same instance twice in one chain is reported at the second place."""
    assert problems_of(["login", "policy/a", "policy/a", "send"]) == [
        'pipeline[2]: stage "policy/a" appears twice (first at pipeline[1]); '
        "remove one of them, or give each its own instance name, such as "
        '"policy/second"'
    ]


def test_terminal_empty_chain_rejected() -> None:
    """An empty chain is reported with the terminal stages to end it with."""
    assert problems_of([]) == [
        'pipeline: the chain is empty; list its stages, ending with "send"'
    ]


def test_terminal_missing_at_end_rejected() -> None:
    """A chain whose last stage is not terminal is reported with the fix."""
    assert problems_of(["login", "policy"]) == [
        'pipeline: the chain has no terminal stage; its last stage "policy" '
        'passes requests on to nothing; end it with "send"'
    ]


def test_terminal_not_last_rejected() -> None:
    """A terminal stage before other stages is reported at its position."""
    assert problems_of(["login", "policy", "send", "noisy"]) == [
        'pipeline[2]: stage "send" is terminal, so nothing after it would run; '
        "move it to the end",
        'pipeline: the chain has no terminal stage; its last stage "noisy" '
        'passes requests on to nothing; end it with "send"',
    ]
