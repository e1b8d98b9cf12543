"""The project's one config mechanism: dataclasses filled from a YAML file and ``key=value`` overrides.

A method declares its settings as a dataclass with defaults (nested dataclasses group
related settings); ``load_config(StegoConfig, "stego/cocostuff27_vitb8",
["lr_head=1e-4", "loss.pointwise=false"])`` reads the file, applies the overrides in
order and checks every value against its field's type. An unknown key or a value of the
wrong type raises :class:`~unseg.errors.ConfigError` naming the key, where it came from
and the expected type: a typo never silently falls back to a default.

Override values are read as YAML (``true``, ``null``, ``[1, 2]``, ``{a: 1}``); a group
given partially keeps the defaults of the keys it does not name.

The papers' runs ship inside the package (``unseg/configs/<method>/<name>.yaml``), so they
are found by name after a plain ``pip install``: ``"stego/cocostuff27_vitb8"``, or
``"cocostuff27_vitb8"`` where the method is known and the name is unambiguous. A path to
a YAML file works wherever a name does.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from .errors import ConfigError
from .io import atomic_path
from .kinds import FRACTION, NON_NEGATIVE_REAL, POSITIVE, PROBABILITY, Kind

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "load_config",
    "config_from_dict",
    "parse_override",
    "dump_config",
    "save_config",
    "shipped_configs",
    "config_description",
    "resolve_config",
    "require_accelerator",
]

T = TypeVar("T", bound="DataclassInstance")  # a config class
Where = Callable[[str], str]

# PyYAML reads YAML 1.1, where ``5e-4`` (no dot) is a string: float fields accept such text.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def shipped_configs(method: str | None = None) -> dict[str, Traversable]:
    """The configs installed with unseg, ``"<method>/<name>"`` -> file, sorted; only ``method``'s if given."""
    root = resources.files("unseg") / "configs"
    found = {}
    for folder in root.iterdir():
        if folder.is_dir() and (method is None or folder.name == method):
            for file in folder.iterdir():
                if file.is_file() and file.name.endswith(".yaml"):
                    found[f"{folder.name}/{file.name[: -len('.yaml')]}"] = file
    return dict(sorted(found.items()))


def config_description(file: Traversable | Path) -> str:
    """A config's one-line summary: the first line of its leading comment."""
    for line in file.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def resolve_config(ref: str | Path, method: str | None = None) -> Traversable | Path:
    """The file of config ``ref``: an existing YAML path, else a shipped config's name.

    Names are ``"<method>/<name>"`` or a bare ``"<name>"`` found in one method's folder
    (``method`` restricts the search to that folder); a trailing ``.yaml`` is allowed.
    """
    if Path(ref).is_file():
        return Path(ref)
    shipped = shipped_configs(method)
    name = str(ref).removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    matches = [n for n in shipped if n.split("/", 1)[1] == name]
    if len(matches) == 1:
        return shipped[matches[0]]
    if matches:
        raise ConfigError(f"config name {str(ref)!r} is ambiguous: it is {' and '.join(matches)}; give the full name")
    scope = f"shipped {method} configs" if method else "shipped configs"
    raise ConfigError(
        f"config {str(ref)!r} is neither a YAML file nor a shipped config name; {scope}: "
        f"{', '.join(shipped) or 'none'} (`unseg configs` describes them)"
    )


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), method: str | None = None
) -> T:
    """An instance of dataclass ``cls``: its defaults, updated by the YAML file or shipped config ``path``
    (see :func:`resolve_config`; ``method`` narrows the names), then by ``overrides``."""
    file = resolve_config(path, method) if path is not None else None
    data: dict[str, Any] = read_yaml(file) if file is not None else {}
    origins: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key.split("."), value)
        origins[key] = f"override {item!r}"
    source = f"config file {file}" if file is not None else "config"

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


def read_yaml(path: str | Path | Traversable) -> dict[str, Any]:
    path = Path(path) if isinstance(path, str) else path
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:  # its message spans lines: said in one
        raise ConfigError(f"config file {path} is not valid YAML ({' '.join(str(exc).split())})") from None
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
        raise ConfigError(f"override {item!r}: value is not valid YAML ({' '.join(str(exc).split())})") from None


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
        raise ConfigError(
            f"{where(prefix)}: key {prefix!r} expects a mapping of {cls.__name__} settings, "
            f"got {data!r} ({type(data).__name__})"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = _join(prefix, str(name))
        if name not in fields:
            raise ConfigError(f"{where(key)}: unknown key {key!r}; {cls.__name__} has {', '.join(fields)}")
        kwargs[name] = _convert(hints[name], value, key, where, _field_default(fields[name]))
        _check_value(name, kwargs[name], key, where)
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where(prefix)}: required key(s) {', '.join(_join(prefix, m) for m in missing)} not set")
    return cls(**kwargs)


# Keys every method's config uses with one meaning (Lightning Trainer and DataLoader settings, counts
# and sizes), with their allowed values: a value of the right type but out of range fails when the
# config is read, naming the key, where it came from and what is allowed (`unseg docs reliability`).
PRECISIONS = (
    "32-true",
    "32",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "64-true",
    "64",
    "transformer-engine",
    "transformer-engine-float16",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_CHOICES = {"precision": PRECISIONS, "accelerator": ACCELERATORS}
_AT_LEAST = {
    "batch_size": 1,
    "num_workers": 0,
    "devices": 1,
    "num_nodes": 1,
    "max_steps": 1,
    "epochs": 1,
    "checkpoint_every": 1,
    "checkpoint_every_epochs": 1,
    "every_epochs": 1,
    "log_every": 1,
    "knn_k": 1,
    "num_neighbors": 1,
    "n_classes": 1,
    "extra_clusters": 0,
    "dim": 1,
    "num_prototypes": 1,
    "input_size": 1,
    "val_input_size": 1,
    "mask_size": 1,
    "num_images": 1,
    "queue_length": 0,
}
# number-valued keys with one meaning in every config, and the kind of number each must be
_REAL = {
    "lr_head": POSITIVE,
    "lr_probes": POSITIVE,
    "lr_backbone": POSITIVE,
    "final_lr": NON_NEGATIVE_REAL,
    "weight_decay": NON_NEGATIVE_REAL,
    "weight_decay_end": NON_NEGATIVE_REAL,
    "dropout": FRACTION,
    "drop_path_rate": FRACTION,
    "momentum_teacher": PROBABILITY,
    "momentum_teacher_end": PROBABILITY,
    "temperature": POSITIVE,
}


def _check_value(name: str, value: Any, key: str, where: Where) -> None:
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"{where(key)}: key {key!r} = {value!r} is not one of {', '.join(_CHOICES[name])}")
    if name in _AT_LEAST and isinstance(value, int) and value < _AT_LEAST[name]:
        raise ConfigError(f"{where(key)}: key {key!r} = {value} is not allowed; it must be at least {_AT_LEAST[name]}")
    if name in _REAL and isinstance(value, float) and not _REAL[name].allows(value):
        raise ConfigError(f"{where(key)}: key {key!r} = {value} is not allowed; it must be {_REAL[name].expects}")


def require_accelerator(accelerator: str) -> None:
    """Fail before training when the config asks for an accelerator this machine does not have
    (checked when a run starts, not when a config is read: evaluating a GPU run's config on a
    laptop is fine)."""
    import torch

    missing = (accelerator in ("gpu", "cuda") and not torch.cuda.is_available()) or (
        accelerator == "mps" and not torch.backends.mps.is_available()
    )
    if missing:
        raise ConfigError(
            f"key 'accelerator' = {accelerator!r}, but torch finds no such device on this machine; "
            "use accelerator=cpu, or accelerator=auto to take a GPU when there is one"
        )


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
        return ConfigError(
            f"{where(key)}: key {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )

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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        base = default if isinstance(default, tp) else None
        return _build(tp, value, key, where, base)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise wrong()
            return tuple(
                _convert(a, v, f"{key}[{i}]", where, None) for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
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


def configs_table() -> str:
    """Every shipped config's name (for ``--config``) and summary, one line each (``unseg configs``)."""
    configs = shipped_configs()
    width = max(map(len, configs), default=0)
    return "\n".join(f"{name:{width}s}  {config_description(file)}" for name, file in configs.items())


# the kinds (unseg.kinds) of the command line's config options, here where configs are read
class ConfigRef(Kind):
    """A shipped config name or a YAML file holding a mapping of settings (read to check it)."""

    category = "config"

    def __init__(self, method: str) -> None:
        super().__init__(f"a shipped {method} config name (`unseg configs`) or a YAML file of settings")
        self.method = method

    def parse(self, text: str) -> str:
        read_yaml(resolve_config(text, self.method))  # an unknown name, bad YAML or a non-mapping fail here
        return text


class Override(Kind):
    """``key=value`` (``group.key=value``), the value read as YAML; the key is checked against the config later."""

    category = "override"

    def __init__(self) -> None:
        super().__init__("key=value settings over the config, e.g. root=DATA")
        self.many = True

    def parse(self, text: str) -> str:
        parse_override(text)
        return text
