"""Typed recipes: YAML mapped onto dataclasses, with a clear error for unknown or mistyped keys."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from distilprune.errors import UserError, require_file

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (dataclasses recurse)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_type, where): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is str and isinstance(value, Path):
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def plain(value: Any) -> Any:
    """A dataclass as a plain dict; any other value as it is."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _on_field_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested config on top of the field's own default: ``train:
    {max_steps: 100}`` of a config whose ``train`` defaults to ``TrainConfig(lr=2e-4)`` keeps
    that 2e-4, not ``TrainConfig``'s own default."""
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    base = {g.name: plain(getattr(default, g.name)) for g in dataclasses.fields(default) if g.init}
    return merge(base, value, keep_none=True)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "recipe") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are a :class:`UserError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(_on_field_default(fields[name], value), hints[name], f"{where}.{name}")
              for name, value in data.items()}
    missing = [
        name for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for missing files and bad syntax."""
    path = Path(path)
    require_file(path, "recipe")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping")
    return data


def load_run_recipe(path: str | Path, cls: type[T], overrides: dict[str, Any] | None = None,
                    where: str = "recipe") -> T:
    """A whole-run recipe (pipeline, study) with dotted ``--set`` overrides applied as ``cls``;
    ``out`` defaults to ``runs/<recipe name>``."""
    data = merge(load_yaml(path), overrides or {}, keep_none=True)
    data.setdefault("out", str(Path("runs") / Path(path).stem))
    return from_dict(cls, data, where)


COMMAND_SECTIONS = ("finetune", "fit_mlm_head", "distill_mlm")


def recipe_section(path: str | Path, section: str) -> dict[str, Any]:
    """The ``section:`` of a command recipe, or the whole file when it has none.

    Beside a section only other commands' sections may stand: any other top-level key would be
    silently ignored, so it is an error.
    """
    data = load_yaml(path)
    if section not in data:
        return data
    stray = sorted(set(data) - set(COMMAND_SECTIONS))
    if stray:
        raise UserError(f"{path}: unknown top-level key {stray[0]!r} (settings belong under {section}:)")
    value = {} if data[section] is None else data[section]
    if not isinstance(value, dict):
        raise UserError(f"{path}: {section}: expected a mapping, got {value!r}")
    return value


def merge(base: dict[str, Any], overrides: dict[str, Any], keep_none: bool = False) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``. ``None`` values are ignored (an unset flag)
    unless ``keep_none`` (a ``--set key=null`` switches a setting off)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None and not keep_none:
            continue
        if isinstance(value, dict):
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value, keep_none)
        else:
            out[key] = value
    return out


def nested(key: str, value: Any) -> dict[str, Any]:
    """``"a.b"``, ``v`` -> ``{"a": {"b": v}}``."""
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


def dotted_overrides(assignments: list[str] | None) -> dict[str, Any]:
    """``["train.lr=1e-4", "qat=null"]`` as a nested mapping; values are read as YAML, so ``null``
    switches a setting off and ``[a, b]`` is a list."""
    out: dict[str, Any] = {}
    for assignment in assignments or []:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"--set {assignment!r}: the value is not valid YAML") from exc
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {assignment!r}: {part} is set to a value above")
        node[leaf] = value
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for JSON metadata and config hashes)."""
    return dataclasses.asdict(obj)
