"""Decoding a stage's settings into its Config Struct, with YAML-path errors."""

from __future__ import annotations

import re
import types
from typing import (
    Annotated,
    Any,
    Literal,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import msgspec

_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_INVALID_VALUE = re.compile(r"^Invalid (?:enum )?value\b.*", re.DOTALL)


def decode_settings(raw: Any, config_type: type[Any], path: str) -> tuple[Any, str]:
    """Decode one stage's raw settings into ``config_type``.

    Numbers and booleans may be given as strings, as the values of
    ``${VAR}`` references arrive. A Struct that does not forbid unknown
    fields still has unknown keys reported, so that a misspelt key is never
    ignored.

    Args:
        raw: The settings as read from YAML; None means no settings.
        config_type: The stage's Config type.
        path: The YAML path of the settings, such as ``stages.authorize/strict``.

    Returns:
        The decoded settings and an empty string, or None and one problem
        message that starts with the YAML path of the bad value, such as
        ``stages.authorize/strict.tool_scopes.partners: Expected `object`,
        got `str```. Values are never quoted, since they may be secrets.
    """
    if raw is None:
        raw = {}
    try:
        config = msgspec.convert(raw, config_type, str_keys=True, strict=False)
    except msgspec.ValidationError as exc:
        return None, locate_error(exc, raw, config_type, path)
    unknown = _unknown_keys(raw, config_type)
    if unknown:
        valid = ", ".join(sorted(_field_names(config_type))) or "none"
        return None, (
            f"{path}: unknown setting {unknown[0]!r}; valid settings: {valid}"
        )
    return config, ""


def locate_error(
    exc: msgspec.ValidationError, raw: Any, expected: Any, path: str
) -> str:
    """Describe a validation error with the full YAML path of the bad value.

    msgspec writes ``[...]`` for a mapping key. Where the path has one, the
    entries of that mapping are decoded one by one to find the key whose
    value fails, so the message names it.
    """
    head, sep, where = str(exc).rpartition(" - at `$")
    if not sep:
        return f"{path}: {exc}"
    relative = where.rstrip("`")
    before, marker, _ = relative.partition("[...]")
    if marker:
        container = _lookup(raw, before)
        value_type = _mapping_value_type(_type_at(expected, before))
        if isinstance(container, dict) and value_type is not None:
            for key, value in container.items():
                try:
                    msgspec.convert(value, value_type, str_keys=True, strict=False)
                except msgspec.ValidationError as inner:
                    return locate_error(
                        inner, value, value_type, f"{path}{before}.{key}"
                    )
    message = value_free(head)
    if message == "Invalid value":
        choices = _choices(expected, relative)
        if choices:
            message += f"; expected one of: {', '.join(choices)}"
    return f"{path}{relative}: {message}"


def value_free(message: str) -> str:
    """Return a msgspec validation message without the value it quotes.

    msgspec quotes the value of a failed enum or tag check (``Invalid enum
    value 'x'``); that becomes ``Invalid value``. Other messages name types
    and bounds only, and are returned as they are.
    """
    return _INVALID_VALUE.sub("Invalid value", message)


def _choices(expected: Any, path: str) -> list[str]:
    """Return the values accepted at ``path``: a Literal's, or a union's tags."""
    target = _strip(_type_at(expected, path))
    if get_origin(target) is Literal:
        return sorted(str(arg) for arg in get_args(target))
    parent_path, _, name = path.rpartition(".")
    parent = _strip(_type_at(expected, parent_path))
    arms = get_args(parent) if get_origin(parent) in (Union, types.UnionType) else ()
    tags = []
    for arm in arms:
        config = getattr(arm, "__struct_config__", None)
        if config is not None and config.tag_field == name:
            tags.append(str(config.tag))
    return sorted(tags)


def _unknown_keys(raw: Any, config_type: type[Any]) -> list[str]:
    struct_config = getattr(config_type, "__struct_config__", None)
    if struct_config is None or struct_config.forbid_unknown_fields:
        return []
    if not isinstance(raw, dict):
        return []
    known = _field_names(config_type)
    return [str(key) for key in raw if key not in known]


def _field_names(config_type: type[Any]) -> set[str]:
    names = set(getattr(config_type, "__struct_encode_fields__", ()))
    struct_config = getattr(config_type, "__struct_config__", None)
    if struct_config is not None and struct_config.tag_field:
        names.add(struct_config.tag_field)
    return names


def _lookup(raw: Any, path: str) -> Any:
    current = raw
    for name, index in _SEGMENT.findall(path):
        if name:
            if not isinstance(current, dict) or name not in current:
                return None
            current = current[name]
        elif index == "...":
            return None
        else:
            if not isinstance(current, list) or int(index) >= len(current):
                return None
            current = current[int(index)]
    return current


def _type_at(expected: Any, path: str) -> Any:
    """Return the Python type at ``path`` inside ``expected``, or None."""
    current: Any = expected
    for name, index in _SEGMENT.findall(path):
        current = _strip(current)
        if name:
            current = _field_type(current, name)
        elif index != "...":
            args = get_args(current) if get_origin(current) in (list, tuple) else ()
            current = args[0] if args else None
        if current is None:
            return None
    return current


def _field_type(struct_type: Any, encoded_name: str) -> Any:
    if not isinstance(struct_type, type) or not issubclass(struct_type, msgspec.Struct):
        return None
    fields = dict(
        zip(
            struct_type.__struct_encode_fields__,
            struct_type.__struct_fields__,
            strict=True,
        )
    )
    if encoded_name not in fields:
        return None
    return get_type_hints(struct_type).get(fields[encoded_name])


def _mapping_value_type(expected: Any) -> Any:
    expected = _strip(expected)
    if get_origin(expected) is dict:
        return get_args(expected)[1]
    return None


def _strip(expected: Any) -> Any:
    """Remove ``Annotated`` and an optional ``None`` around a type."""
    while True:
        origin = get_origin(expected)
        if origin is Annotated:
            expected = get_args(expected)[0]
        elif origin in (Union, types.UnionType):
            arms = [arm for arm in get_args(expected) if arm is not type(None)]
            if len(arms) != 1:
                return expected
            expected = arms[0]
        else:
            return expected
