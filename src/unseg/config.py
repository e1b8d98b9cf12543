"""The project's one config mechanism: dataclasses filled from a YAML file and ``key=value`` overrides.

A method declares its settings as a dataclass with defaults (nested dataclasses group
related settings); ``load_config(StegoConfig, "configs/stego/cocostuff27_vitb8.yaml",
["lr_head=1e-4", "loss.pointwise=false"])`` reads the file, applies the overrides in
order and checks every value against its field's type. An unknown key or a value of the
wrong type raises :class:`~unseg.errors.ConfigError` naming the key, where it came from
and the expected type: a typo never silently falls back to a default.

Override values are read as YAML (``true``, ``null``, ``[1, 2]``, ``{a: 1}``); a group
given partially keeps the defaults of the keys it does not name.
"""
from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .io import atomic_path

__all__ = ["load_config", "config_from_dict", "parse_override", "dump_config", "save_config"]

T = TypeVar("T")
Where = Callable[[str], str]

# PyYAML reads YAML 1.1, where ``5e-4`` (no dot) is a string: float fields accept such text.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """An instance of dataclass ``cls``: its defaults, updated by the YAML file ``path``, then by ``overrides``."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    origins: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key.split("."), value)
        origins[key] = f"override {item!r}"
    source = f"config file {path}" if path is not None else "config"

    def where(key: str) -> str:  # the override that set a key (or one of its groups), else the file
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in origins:
                return origins[".".join(parts[:n])]
        return source

    return _build(cls, data, "", where, None)


def config_from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """``cls`` from a plain dict (e.g. a checkpoint's stored config), with the same checks as a file."""
    return _build(cls, data, "", lambda _: source, None)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a {type(data).__name__}, not a mapping of settings")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> (``"a.b"``, value read as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(f"override {item!r} is not of the form key=value or group.key=value")
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[parts[-1]] = value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _build(cls: type[T], data: Any, prefix: str, where: Where, base: T | None) -> T:
    """``cls`` from mapping ``data``; keys it lacks keep ``base``'s values (or the class defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where(prefix)}: key {prefix!r} expects a mapping of {cls.__name__} settings, "
                          f"got {data!r} ({type(data).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = _join(prefix, str(name))
        if name not in fields:
            raise ConfigError(f"{where(key)}: unknown key {key!r}; {cls.__name__} has {', '.join(fields)}")
        kwargs[name] = _convert(hints[name], value, key, where, _field_default(fields[name]))
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where(prefix)}: required key(s) {', '.join(_join(prefix, m) for m in missing)} "
                          f"not set")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, where: Where, default: Any) -> Any:
    """``value`` checked against (and, for containers and groups, converted to) type ``tp``."""
    def wrong() -> ConfigError:
        return ConfigError(f"{where(key)}: key {key!r} expects {_type_name(tp)}, "
                           f"got {value!r} ({type(value).__name__})")

    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key, where, default)
            except ConfigError:
                continue
        raise wrong()
    if origin is Literal:
        if value in args:
            return value
        raise wrong()
    if dataclasses.is_dataclass(tp):
        base = default if isinstance(default, tp) else None
        return _build(tp, value, key, where, base)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise wrong()
            return tuple(_convert(a, v, f"{key}[{i}]", where, None) for i, (a, v) in enumerate(zip(args, value)))
        items = [_convert(args[0], v, f"{key}[{i}]", where, None) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        return {k: _convert(args[1], v, f"{key}.{k}", where, None) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
        raise wrong()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise wrong()


def dump_config(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain dicts, lists and scalars (YAML- and JSON-ready; loads back to ``cfg``)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically (a run records the exact settings it used)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
