"""Values checked against type hints: config overrides, variant keys and model options.

Dataclasses do not check their fields, so `--set optim.batch_size=True` would train with batch 1
and `model.options.base_channels=abc` would fail deep inside the model with an unrelated message.
Everything a user types goes through `check` instead, which knows the few types configs use
(bool, int, float, str, None, tuples, unions, mappings) and names the field that is wrong.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Mapping


def check(hint: Any, value: Any, name: str) -> Any:
    """`value` as the type `hint` wants it, or TypeError naming `name`.

    Conversions a typed language would make implicitly and nothing more: int -> float, list ->
    tuple (JSON and literals give lists), and anything -> str for str fields (`split=25`).
    A bool is never an int or a float here, although Python says it is.
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is not str:  # str accepts anything, so it is the last resort
                try:
                    return check(option, value, name)
                except TypeError:
                    pass
        if str in typing.get_args(hint):
            return str(value)
        raise TypeError(f"{name}: expected {_show(hint)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if not isinstance(value, (dict, list, tuple, set)) and value is not None:
            return str(value)
    elif origin is tuple or hint is tuple:
        if isinstance(value, (list, tuple)):
            args = typing.get_args(hint)
            if not args:  # a bare `tuple`: nested lists become tuples too (hashable, frozen)
                return _freeze(value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(check(args[0], v, f"{name}[{i}]") for i, v in enumerate(value))
            if len(args) == len(value):
                return tuple(check(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    elif origin in (collections.abc.Mapping, dict) or hint in (dict, collections.abc.Mapping):
        if isinstance(value, Mapping):
            return dict(value)
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        raise TypeError(f"{name}: cannot check a value against {hint!r}")
    raise TypeError(f"{name}: expected {_show(hint)}, got {value!r} ({type(value).__name__})")


def _show(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def field_hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (annotations may be strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def checked(cls: type, overrides: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`overrides` with every key a field of dataclass `cls` and every value type-checked.

    Args:
      cls: a dataclass (e.g. a model's config).
      overrides: field values, e.g. a ModelConfig's options from a config file or model.json.
      what: how to name the fields in errors, e.g. "rep_mobile option".
    """
    hints = field_hints(cls)
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise TypeError(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(hints)}")
    return {k: check(hints[k], v, f"{what} {k!r}") for k, v in overrides.items()}


def make(cls: type, overrides: Mapping[str, Any], what: str) -> Any:
    """`cls(**overrides)`, checked as `checked` does."""
    return cls(**checked(cls, overrides, what))


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value
