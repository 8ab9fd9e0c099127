"""Stage references: instance names, import paths and entry-point plug-ins.

The entry-point tests write a real ``.dist-info`` into a temporary directory
on ``sys.path``, so ``importlib.metadata`` discovers the plug-ins exactly as
it discovers installed packages, for that test only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import (
    ChainConfigError,
    StageLookupError,
    StageRef,
    StageRegistry,
    parse_ref,
    plan_chain,
)
from tests.fixtures.dist_info import write_dist_info

from .stages_for_tests import registry_stages

GROUP = "test_agent_proxy.stages"
STAMP = "tests.unit.pipeline.stages_for_tests:Stamp"


def registry() -> StageRegistry:
    return StageRegistry(registry_stages())


def problems_of(refs: list[str], reg: StageRegistry | None = None) -> list[str]:
    with pytest.raises(ChainConfigError) as info:
        plan_chain(refs, reg or registry(), {})
    return info.value.problems


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on ``sys.path`` for generated distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("authorize", StageRef("authorize")),
        ("authorize/strict", StageRef("authorize", "strict")),
        ("rate_limit/per-user_2", StageRef("rate_limit", "per-user_2")),
        ("pkg.mod:Stage", StageRef("pkg.mod:Stage")),
        ("pkg.mod:Outer.Stage/eu", StageRef("pkg.mod:Outer.Stage", "eu")),
    ],
)
def test_parse_ref_valid_forms_split(ref: str, parsed: StageRef) -> None:
    """A reference splits into its kind and optional instance name."""
    assert parse_ref(ref) == parsed
    assert str(parsed) == ref


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("authorize/", "invalid instance name '' in 'authorize/'"),
        ("authorize/str ict", "invalid instance name 'str ict'"),
        ("authorize/strict!", "invalid instance name 'strict!'"),
        ("authorize/-x", "invalid instance name '-x'"),
        ("authorize/a/b", "invalid instance name 'a/b'"),
        ("authorize/" + "x" * 64, "invalid instance name"),
        ("2fa", "invalid stage type '2fa'"),
        ("rate-limit", "invalid stage type 'rate-limit'"),
        ("", "invalid stage type ''"),
        ("pkg..mod:Stage", "invalid stage reference 'pkg..mod:Stage'"),
        ("pkg.mod:", "invalid stage reference 'pkg.mod:'"),
    ],
)
def test_parse_ref_bad_characters_rejected(ref: str, message: str) -> None:
    """A malformed reference is rejected with the part at fault."""
    with pytest.raises(StageLookupError, match="^" + re.escape(message)):
        parse_ref(ref)


def test_plan_bad_instance_name_reported_at_position() -> None:
    """A bad instance name in a chain is a problem at its YAML path."""
    problems = problems_of(["login", "policy/no good", "send"])
    assert problems[0].startswith(
        "pipeline[1]: invalid instance name 'no good' in 'policy/no good'; an "
        "instance name contains only letters, digits, '_' and '-'"
    )


def test_plan_two_instances_of_one_type_accepted() -> None:
    """Two instances of one type may share a chain, each with its own settings."""
    plan = plan_chain(
        ["login", "policy/a", "policy/b", "send"],
        registry(),
        {"policy/a": {"deny": ["mallory"]}, "policy/b": {"deny": ["eve"]}},
    )
    first, second = plan.declarations[1], plan.declarations[2]
    assert (first.type_name, first.instance) == ("policy", "a")
    assert (second.type_name, second.instance) == ("policy", "b")
    assert first.settings.deny == ["mallory"]  # type: ignore[attr-defined]
    assert second.settings.deny == ["eve"]  # type: ignore[attr-defined]


def test_plan_import_path_with_instance_resolves() -> None:
    """``module:Class/name`` imports the class and keeps the instance name."""
    plan = plan_chain(["login", f"{STAMP}/one", "policy", "send"], registry(), {})
    declaration = plan.declarations[1]
    assert declaration.instance == "one"
    assert declaration.type_name == STAMP
    assert str(declaration.origin) == "import path"


def test_plan_module_raising_at_import_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module whose top-level code raises is a problem, not a crash."""
    (tmp_path / "raising_stage_module.py").write_text("raise ValueError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = problems_of(["login", "raising_stage_module:Stage", "policy", "send"])
    assert problems == [
        "pipeline[1]: cannot import module 'raising_stage_module' for stage "
        "'raising_stage_module:Stage': ValueError: boom"
    ]


def test_entry_point_stage_usable_by_name(site: Path) -> None:
    """An entry point's name is a stage type that chains and instances use."""
    write_dist_info(site, "stamp-plugin", "1.2.0", {GROUP: {"stamp": STAMP}})
    reg = registry()
    reg.add_entry_points(GROUP)
    assert reg.problems == []
    assert "stamp" in reg.names
    plan = plan_chain(["login", "stamp", "stamp/two", "policy", "send"], reg, {})
    assert [d.ref for d in plan.declarations][1:3] == ["stamp", "stamp/two"]
    assert str(plan.declarations[1].origin) == (
        "entry point stamp = tests.unit.pipeline.stages_for_tests:Stamp "
        "(distribution 'stamp-plugin 1.2.0')"
    )


def test_entry_point_named_like_builtin_rejected(site: Path) -> None:
    """A plug-in cannot take the name of a registered stage."""
    write_dist_info(site, "evil-plugin", "0.1", {GROUP: {"policy": STAMP}})
    reg = registry()
    reg.add_entry_points(GROUP)
    assert reg.problems == [
        f"{GROUP}: entry point 'policy' of distribution 'evil-plugin 0.1' uses "
        "the name of a built-in stage, 'policy'; rename the entry point or "
        "uninstall the package"
    ]
    plan = plan_chain(["login", "policy", "send"], reg, {})
    assert plan.declarations[1].cls is registry_stages()["policy"]


def test_entry_point_name_shared_by_two_packages_rejected(site: Path) -> None:
    """Two distributions registering one name make the name unusable."""
    write_dist_info(site, "first-plugin", "1.0", {GROUP: {"stamp": STAMP}})
    write_dist_info(site, "second-plugin", "2.0", {GROUP: {"stamp": STAMP}})
    reg = registry()
    reg.add_entry_points(GROUP)
    [problem] = reg.problems
    assert "uses the same name as the entry point of distribution" in problem
    assert "'first-plugin 1.0'" in problem
    assert "'second-plugin 2.0'" in problem
    assert "stamp" not in reg.names


def test_entry_point_invalid_name_rejected(site: Path) -> None:
    """An entry-point name that is not a valid type name is reported."""
    write_dist_info(site, "dash-plugin", "1.0", {GROUP: {"stamp-it": STAMP}})
    reg = registry()
    reg.add_entry_points(GROUP)
    assert reg.problems == [
        f"{GROUP}: entry point 'stamp-it' of distribution 'dash-plugin 1.0' has "
        "an invalid stage type name; a type name starts with a letter and "
        "contains only letters, digits and '_'"
    ]


def test_broken_entry_point_names_distribution(site: Path) -> None:
    """A plug-in that fails to load is reported with its distribution."""
    write_dist_info(
        site, "broken-plugin", "3.1", {GROUP: {"ghost": "no_such_plugin_mod:Stage"}}
    )
    reg = registry()
    reg.add_entry_points(GROUP)
    assert reg.problems == []
    problems = problems_of(["login", "ghost", "policy", "send"], reg)
    assert problems == [
        "pipeline[1]: cannot load stage entry point 'ghost' "
        "(no_such_plugin_mod:Stage) of distribution 'broken-plugin 3.1': "
        "ModuleNotFoundError: No module named 'no_such_plugin_mod'"
    ]


def test_broken_entry_point_unused_is_harmless(site: Path) -> None:
    """A broken plug-in that no chain names does not stop the chain."""
    write_dist_info(
        site, "broken-plugin", "3.1", {GROUP: {"ghost": "no_such_plugin_mod:Stage"}}
    )
    reg = registry()
    reg.add_entry_points(GROUP)
    plan = plan_chain(["login", "policy", "send"], reg, {})
    assert len(plan.declarations) == 3


def test_entry_point_naming_non_class_rejected(site: Path) -> None:
    """An entry point must name a class."""
    target = "tests.unit.pipeline.stages_for_tests:registry_stages"
    write_dist_info(site, "func-plugin", "1.0", {GROUP: {"func": target}})
    reg = registry()
    reg.add_entry_points(GROUP)
    problems = problems_of(["login", "func", "policy", "send"], reg)
    assert problems == [
        f"pipeline[1]: entry point 'func' ({target}) of distribution "
        "'func-plugin 1.0' names function, not a class"
    ]


def test_unknown_stage_lists_entry_points(site: Path) -> None:
    """The known stages listed for a typo include unloaded plug-ins."""
    write_dist_info(site, "stamp-plugin", "1.2.0", {GROUP: {"stamp": STAMP}})
    reg = registry()
    reg.add_entry_points(GROUP)
    [problem] = problems_of(["login", "stomp", "policy", "send"], reg)
    assert problem == (
        "pipeline[1]: unknown stage 'stomp'; known stages: broken, login, "
        "policy, send, stamp"
    )
