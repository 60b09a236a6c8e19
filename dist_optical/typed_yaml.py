"""Typed settings from YAML: dataclass fields that carry their range (`setting`), files that build on
a base file (`read_yaml`), dotted ``key.sub=value`` overrides, and errors that name the file or the
override, the key, the value and what was expected. It knows nothing of what the fields mean: the
schema is config.py's."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_optical.errors import UserError


class ConfigError(UserError):
    """A configuration file or override that does not fit the schema."""


# A range: (test, what is expected), checked at load time on the field that carries it.
Check = tuple[Callable[[Any], bool], str]
POSITIVE: Check = (lambda v: v > 0, "> 0")
NONNEG: Check = (lambda v: v >= 0, ">= 0")
ATLEAST1: Check = (lambda v: v >= 1, ">= 1")
FRACTION: Check = (lambda v: 0 <= v <= 1, "in [0, 1]")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    resume: bool = False,
    speed_only: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field with its range (``check``), whether a resume must keep it (``resume``), and
    whether it changes only how fast the same recipe runs (``speed_only``: left out of
    `config_hash`, so a finished run still counts as made from the config)."""
    metadata = {"check": check, "resume": resume, "speed_only": speed_only}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def read_yaml(path: Path, cls: type, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping for dataclass ``cls``; a top-level ``base: FILE`` (relative to this
    file) is read first and this file's keys are merged over it (`merged`), so a variant names only
    what differs from the config it builds on."""
    if path.is_dir():
        raise ConfigError(f"--config {path}: is a folder; expected a YAML file (configs/default.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml_mapping(path)
    if "base" not in raw:
        return raw
    base = path.parent / str(raw.pop("base"))
    if base.resolve() in seen:
        raise ConfigError(f"{path}: base {base} includes itself")
    return merged(read_yaml(base, cls, (*seen, path.resolve())), raw, cls)


def yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` ({} when empty); a ConfigError naming the file
    when it is not UTF-8, not YAML or not a mapping."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); expected a YAML file") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded or {}


def merged(base: dict[str, Any], over: dict[str, Any], cls: type) -> dict[str, Any]:
    """``over`` on ``base``, for dataclass ``cls``: a section (a dataclass-typed field) merges key by
    key; anything else replaces, a mapping-valued setting such as ``loss`` included (so
    ``loss: {mse: 1.0}`` means MSE alone). Neither input is changed."""
    out = copy.deepcopy(base)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in over.items():
        hint = hints.get(key) if key in names else None
        if hint is not None and dataclasses.is_dataclass(hint) and isinstance(value, dict):
            section = out.get(key)
            out[key] = merged(section if isinstance(section, dict) else {}, value, hint)
        else:
            out[key] = copy.deepcopy(value)  # an unknown key too: the builder names it
    return out


@dataclass
class Source:
    """Where a config value came from: the YAML file, or a command-line override (named in errors)."""

    file: str
    overridden: dict[str, str] = field(default_factory=dict)

    def of(self, key: str) -> str:
        """The override that set ``key``, a section above it or a key below it; else the file."""
        for dotted, item in self.overridden.items():
            if _nested(key, dotted) or _nested(dotted, key):
                return f"command line ({item})"
        return self.file

    def __str__(self) -> str:
        return self.file


def _nested(inner: str, outer: str) -> bool:
    """Whether dotted key ``inner`` is ``outer`` or lies below it (``outer.x``, ``outer[0]``)."""
    return inner == outer or inner.startswith((outer + ".", outer + "["))


def set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def pop_path(node: dict[str, Any], dotted: str) -> bool:
    """Remove a dotted key from nested sections; whether it was there."""
    *sections, key = dotted.split(".")
    for section in sections:
        node = node.get(section)
        if not isinstance(node, dict):
            return False
    if key not in node:
        return False
    del node[key]
    return True


def origin_of(source: str | Source, key: str) -> str:
    """The file or the command-line override a key's value came from."""
    return source.of(key) if isinstance(source, Source) else str(source)


def build(cls: type, raw: Any, source: str | Source, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping (types and choices checked, ranges not: see
    `check_ranges`); ``source`` names where it came from, ``prefix`` is the dotted key path so far."""
    if not isinstance(raw, dict):
        where = origin_of(source, prefix.rstrip("."))
        raise ConfigError(f"{where}: config key {prefix or '<top>'!r}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{origin_of(source, prefix + unknown[0])}: unknown config key {prefix + unknown[0]!r} "
            f"(known here: {', '.join(sorted(names))})"
        )
    return cls(**{name: _coerce(hints[name], value, source, prefix + name) for name, value in raw.items()})


def _coerce(hint: Any, value: Any, source: str | Source, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, key + ".")
    where = origin_of(source, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where}: config key {key!r}: expected one of {', '.join(choices)}, got {value!r}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: config key {key!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: config key {key!r}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint)
        return {
            _coerce(key_type, k, source, f"{key}.{k}"): _coerce(value_type, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is float and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e-4" as a string
            value = float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"{where}: config key {key!r}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    if hint is float and not math.isfinite(value):  # inf passes every "> 0" check
        raise ConfigError(f"{where}: config key {key!r}: expected a finite number, got {value!r}")
    return value


def check_ranges(node: Any, source: str | Source) -> None:
    """Every field's range (its ``check``), sections and lists of sections included."""
    for key, value, (test, expected) in _checked_fields(node):
        if not test(value):
            where = origin_of(source, key)
            raise ConfigError(f"{where}: config key {key!r}: expected {expected}, got {value!r}")


def _checked_fields(node: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any, Check]]:
    """(dotted key, value, check) of every field that carries a check, lists of sections included."""
    for f in dataclasses.fields(node):
        key, value = prefix + f.name, getattr(node, f.name)
        if f.metadata.get("check"):
            yield key, value, f.metadata["check"]
        if dataclasses.is_dataclass(value):
            yield from _checked_fields(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _checked_fields(item, f"{key}[{i}].")


def marked(flag: str, cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of the fields whose metadata sets ``flag`` (a marked section stands for its keys)."""
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if f.metadata.get(flag):
            keys.append(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]):
            keys.extend(marked(flag, hints[f.name], prefix + f.name + "."))
    return keys
