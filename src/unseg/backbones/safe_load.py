"""Reading a checkpoint file without running code from it (``unseg docs checkpoints``).

Pickles are read with torch's ``weights_only`` unpickler, else with :class:`SafeUnpickler`,
which turns objects of other classes (pickled hyper-parameters: omegaconf, Lightning's
``AttributeDict``, ``argparse.Namespace``) into inert :class:`PickledObject` stand-ins
without importing their modules, and refuses any other function a pickle asks to call.
``.safetensors`` files are read as such; a TorchScript archive is refused (torch.load would
run it). Only ``trust_checkpoint=True`` unpickles fully.
"""

from __future__ import annotations

import _compat_pickle
import inspect
import logging
import pickle
import sys
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError

__all__ = ["PickledObject", "UnsafeGlobalError", "SafeUnpickler", "to_plain", "read_checkpoint"]

log = logging.getLogger(__name__)

_TRUST_HINT = "only if you trust its source: --trust-checkpoint (trust_checkpoint=True) unpickles it fully"


class PickledObject:
    """Stand-in for an object of a class the safe loader does not import.

    It keeps what the pickle passed (constructor ``args`` / ``kwargs``, ``state``, and the
    items of dict or list subclasses) and never calls anything; :func:`to_plain` turns it
    into plain dicts and lists. ``pickled_class`` names the class it stands for.
    """

    pickled_class = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    dict_items: dict[Any, Any]
    list_items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.dict_items, obj.list_items = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pickle's REDUCE calls cls(*args): kept by __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # items of a dict subclass
        self.dict_items[key] = value

    def append(self, value: Any) -> None:  # items of a list subclass
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<{self.pickled_class}, not imported>"


class UnsafeGlobalError(pickle.UnpicklingError):
    """A pickle asked for a function (or other non-class object) outside the allow list."""


def _allowed_globals() -> dict[str, Any]:
    """What torch's ``weights_only`` unpickler allows (tensor rebuilds, storages, dtypes,
    OrderedDict, ...), globals registered with ``torch.serialization.add_safe_globals``, and
    numpy's array / scalar rebuilds."""
    from torch import _weights_only_unpickler

    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    for entry in torch.serialization.get_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, f"{entry.__module__}.{entry.__qualname__}")
        allowed[name] = obj
    np = sys.modules.get("numpy")
    if np is not None:
        multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
        allowed.update({"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype})
        for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 and 1 names
            allowed.update({f"{module}.{name}": getattr(multiarray, name) for name in ("_reconstruct", "scalar")})
    return allowed


_MISSING = object()


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that imports nothing and calls only allow-listed functions.

    A global in the allow list is returned as it is. A class (or a name in a module that
    is not loaded, which therefore cannot be called) becomes an inert :class:`PickledObject`
    subclass. Any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`UnsafeGlobalError` before anything is called.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _allowed_globals()
        self._stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names of protocol < 3 (``__builtin__``)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full in self._allowed:
            return self._allowed[full]
        obj = sys.modules.get(module, _MISSING)
        for part in name.split("."):
            if obj is _MISSING:
                break
            obj = inspect.getattr_static(obj, part, _MISSING)  # static: no module __getattr__, no import
        if obj is not _MISSING and not isinstance(obj, type):
            raise UnsafeGlobalError(f"the pickle asks for {full}, which is not a class and not allowed in a checkpoint")
        if full not in self._stand_ins:
            self._stand_ins[full] = type(
                name.rsplit(".", 1)[-1], (PickledObject,), {"pickled_class": full, "__module__": __name__}
            )
        return self._stand_ins[full]


def _safe_pickle_load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# what ``torch.load(pickle_module=...)`` needs: ``Unpickler``, ``load`` and a ``__name__``
_SAFE_PICKLE = types.ModuleType("unseg_safe_pickle")
vars(_SAFE_PICKLE).update(Unpickler=SafeUnpickler, load=_safe_pickle_load)


def to_plain(obj: Any, _open: frozenset[int] = frozenset()) -> Any:
    """Mappings, sequences and :class:`PickledObject` stand-ins (omegaconf configs, Lightning's
    ``AttributeDict``, ``Namespace``) as plain dicts and lists; other values as they are."""
    if id(obj) in _open:  # a reference cycle (e.g. omegaconf's parent links)
        return None
    inner = _open | {id(obj)}
    if isinstance(obj, PickledObject):
        if obj.dict_items:
            return {str(k): to_plain(v, inner) for k, v in obj.dict_items.items()}
        if obj.list_items:
            return [to_plain(v, inner) for v in obj.list_items]
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__, slots)
        if isinstance(state, dict):
            if "_content" in state:  # omegaconf DictConfig / ListConfig
                return to_plain(state["_content"], inner)
            if "_val" in state:  # omegaconf value node
                return to_plain(state["_val"], inner)
            return {str(k): to_plain(v, inner) for k, v in state.items()}
        return to_plain(obj.args[0], inner) if len(obj.args) == 1 else [to_plain(a, inner) for a in obj.args]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v, inner) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, inner) for v in obj]
    return obj


def _is_safetensors(path: Path) -> bool:
    """By name, or by layout: an 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _safe_load(path: Path) -> Any:
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load
        raise WeightsError(f"weights file {path} is a TorchScript archive, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # other globals (pickled configs), but also junk: retried below, which names the error
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_SAFE_PICKLE)
    except UnsafeGlobalError as exc:
        raise WeightsError(
            f"weights file {path} was not loaded: {exc}, so unpickling it could run code ({_TRUST_HINT})"
        ) from None
    except Exception as exc:  # any unpickling failure means: not a readable checkpoint
        raise WeightsError(f"weights file {path} is not a readable PyTorch checkpoint ({exc})") from None


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """A checkpoint's top-level dict, on the CPU, without running code from the file.

    ``.safetensors`` files are read as such. Pickled files go through the safe loader
    (see the module docstring); ``trust_checkpoint=True`` unpickles fully instead (which
    runs whatever the file asks for) and logs a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            ckpt = load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types for a bad header / truncation
            raise WeightsError(f"weights file {path} is not a readable safetensors file ({exc})") from None
    elif trust_checkpoint:
        log.warning("unpickling %s fully (--trust-checkpoint): this runs any code the file holds", path)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise WeightsError(f"weights file {path} is not a readable PyTorch checkpoint ({exc})") from None
    else:
        ckpt = _safe_load(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"weights file {path} holds a {type(ckpt).__name__}, not a state dict or checkpoint dict")
    return ckpt
