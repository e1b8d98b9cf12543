"""Load a backbone from any checkpoint layout (``unseg docs checkpoints``), safely.

Supported, detected from the file's content:

- a plain backbone state dict (DINO ``*_pretrain.pth``, torchvision, efficientnet_pytorch),
  as a PyTorch file or a ``.safetensors`` file;
- a DINO training checkpoint (``teacher`` / ``student`` dicts, keys under ``backbone.``
  or ``module.backbone.``): the teacher by default, the network DINO releases;
- a Lightning checkpoint (``state_dict``): Leopart (``model.*`` student, ``teacher.*``):
  the student by default, the network Leopart's evaluation reads; STEGO (``net.model.*``).

The backbone is located by the prefix of its first key (e.g. ``cls_token`` for ViTs);
keys of heads and prototypes under that prefix are dropped; anything else that does
not fit raises a :class:`WeightsError` that names the file and the mismatch.

Reading never runs code from the file unless the caller trusts it: pickles are read
with torch's ``weights_only`` unpickler, else with :class:`SafeUnpickler`, which turns
objects of other classes (pickled hyper-parameters: omegaconf, Lightning's
``AttributeDict``, ``argparse.Namespace``) into inert :class:`PickledObject` stand-ins
without importing their modules, and refuses any other function a pickle asks to call.
"""
from __future__ import annotations

import _compat_pickle
import inspect
import logging
import os
import pickle
import re
import socket
import sys
import threading
import types
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .base import Backbone
from .vit import ViTBackbone

log = logging.getLogger(__name__)

ROLES = ("auto", "teacher", "student")
# (DINOv2 backbone files also hold ``mask_token``, used only in training; timm drops it too)
_HEAD_KEY = re.compile(r"(^|\.)(head|projection_head|prototypes|fc|classifier|_fc|mask_token)(\.|$)")
# first-key aliases of other layouts a backbone accepts (efficientnet_pytorch's names)
_ANCHOR_ALIASES = {"conv_stem.weight": ("_conv_stem.weight",)}
_TRUST_HINT = "only if you trust its source: --trust-checkpoint (trust_checkpoint=True) unpickles it fully"


# ------------------------------------------------------------------ safe reading


class PickledObject:
    """Stand-in for an object of a class the safe loader does not import.

    It keeps what the pickle passed (constructor ``args`` / ``kwargs``, ``state``, and the
    items of dict or list subclasses) and never calls anything; :func:`to_plain` turns it
    into plain dicts and lists. ``pickled_class`` names the class it stands for.
    """

    pickled_class = "?"

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
            raise UnsafeGlobalError(f"the pickle asks for {full}, which is not a class and not allowed "
                                    "in a checkpoint")
        if full not in self._stand_ins:
            self._stand_ins[full] = type(name.rsplit(".", 1)[-1], (PickledObject,),
                                         {"pickled_class": full, "__module__": __name__})
        return self._stand_ins[full]


def _safe_pickle_load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# what ``torch.load(pickle_module=...)`` needs: ``Unpickler``, ``load`` and a ``__name__``
_SAFE_PICKLE = types.ModuleType("unseg_safe_pickle")
_SAFE_PICKLE.Unpickler = SafeUnpickler
_SAFE_PICKLE.load = _safe_pickle_load


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
        raise WeightsError(f"weights file {path} was not loaded: {exc}, so unpickling it could run code "
                           f"({_TRUST_HINT})") from None
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


# ------------------------------------------------------------ finding the backbone


def candidate_state_dicts(ckpt: dict[str, Any], role: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(layout, network, flat state dict) triples a checkpoint may hold the backbone in, preferred
    first; ``network`` is "teacher" / "student" where the layout says so, else ""."""
    if role not in ROLES:
        raise WeightsError(f"weights role {role!r} is not one of {', '.join(ROLES)}")
    if isinstance(ckpt.get("state_dict"), Mapping):
        return [("Lightning checkpoint", "", ckpt["state_dict"])]
    if isinstance(ckpt.get("teacher"), Mapping) or isinstance(ckpt.get("student"), Mapping):
        order = ["student", "teacher"] if role == "student" else ["teacher", "student"]  # auto: DINO's teacher
        if role != "auto" and not isinstance(ckpt.get(role), Mapping):
            raise WeightsError(f"DINO checkpoint has no {role!r} network (it has {', '.join(r for r in order if r in ckpt)})")
        return [("DINO checkpoint", r, ckpt[r]) for r in order if isinstance(ckpt.get(r), Mapping)]
    for key in ("model", "module"):
        if isinstance(ckpt.get(key), Mapping):
            return [(f"checkpoint['{key}']", "", ckpt[key])]
    return [("state dict", "", ckpt)]


def _prefixes(state: Mapping[str, Any], anchors: tuple[str, ...]) -> list[str]:
    found = []
    for key in state:
        for anchor in anchors:
            if isinstance(key, str) and key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if prefix == "" or prefix.endswith("."):
                    found.append(prefix)
    # keep outermost prefixes only: ResNet's anchor ``conv1.weight`` also ends ``layer1.0.conv1.weight``
    return [p for p in found if not any(q != p and p.startswith(q) for q in found)]


def _pick_prefix(prefixes: list[str], role: str) -> tuple[str, str]:
    """(prefix, network) of the backbone to load among several in one state dict.

    Beside a ``teacher`` prefix, the other one is the student (Leopart: ``model.``); "auto"
    takes the student there, as Leopart's evaluation does.
    """
    teachers = [p for p in prefixes if "teacher" in p]
    others = [p for p in prefixes if "teacher" not in p]
    if len(prefixes) == 1:
        if role == "student" and teachers:
            raise WeightsError(f"checkpoint holds only a teacher backbone (prefix {teachers[0]!r}), no student")
        return prefixes[0], "teacher" if teachers else ""
    if role == "teacher":
        if len(teachers) != 1:
            raise WeightsError(f"checkpoint holds backbones under {', '.join(map(repr, prefixes))}; none is the teacher"
                               if not teachers else f"checkpoint holds several teacher backbones: {teachers}")
        return teachers[0], "teacher"
    if len(others) == 1 or "model." in others:
        return (others[0] if len(others) == 1 else "model."), "student"
    raise WeightsError(f"checkpoint holds backbones under {', '.join(map(repr, prefixes))}; "
                       "it is not clear which is the student (pass --weights-role teacher for the teacher)")


def extract_backbone_state(ckpt: dict[str, Any], backbone: Backbone, role: str = "auto",
                           source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str]:
    """The backbone's own state dict out of any supported layout, and which network it is
    (e.g. "student network (prefix 'model.') of a Lightning checkpoint")."""
    target = backbone.weight_state_dict()
    first = next(iter(target))
    anchors = (first,) + _ANCHOR_ALIASES.get(first, ())
    for layout, network, state in candidate_state_dicts(ckpt, role):
        prefixes = _prefixes(state, anchors)
        if prefixes:
            break
    else:
        keys = ", ".join(list(_flat_keys(ckpt))[:5])
        raise WeightsError(
            f"{source} holds no key ending in {first!r}, so it is not a checkpoint of a "
            f"{type(backbone).__name__} backbone (its first keys: {keys})"
        )
    prefix, picked = _pick_prefix(prefixes, role)
    network = network or picked
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = {k: v for k, v in own.items() if k in target or not _HEAD_KEY.search(k)}
    description = f"{network + ' network' if network else 'backbone'} (prefix {prefix!r}) of a {layout}"
    if anchors[0] in own:  # native layout: check keys and shapes here, to name the mismatch
        shapes = {k: v.shape for k, v in target.items()}
        pos = own.get("pos_embed")
        if isinstance(backbone, ViTBackbone) and isinstance(pos, torch.Tensor) and backbone.accepts_pos_embed(pos):
            shapes["pos_embed"] = pos.shape  # another grid: adopted as it is, resampled per input
        _check_fits(own, shapes, f"{source} ({description})", type(backbone).__name__)
    return own, description


def _flat_keys(ckpt: dict[str, Any]) -> list[str]:
    for _, _, state in candidate_state_dicts(ckpt, "auto"):
        return list(state)
    return []


def _check_fits(state: dict[str, Any], shapes: dict[str, torch.Size], source: str, arch: str) -> None:
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k}: {tuple(getattr(state[k], 'shape', ()))} in file, {tuple(shapes[k])} expected"
             for k in shapes if k in state and getattr(state[k], "shape", None) != shapes[k]]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensors of another shape (e.g. {'; '.join(wrong[:2])})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"{source} does not fit backbone {arch}: " + "; ".join(parts)
                           + ". Is it a checkpoint of another architecture?")


def load_backbone_weights(backbone: Backbone, path: str | Path, role: str = "auto",
                          trust_checkpoint: bool = False) -> str:
    """Read ``path`` (any supported layout) into ``backbone``, or raise a WeightsError naming it.

    Returns one line saying which network was loaded, e.g. ``loaded student network
    (prefix 'model.') of a Lightning checkpoint from FILE``.
    """
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    state, description = extract_backbone_state(ckpt, backbone, role=role, source=f"weights file {path}")
    try:
        backbone.load_weight_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"weights file {path} does not fit {type(backbone).__name__}: {exc}") from None
    return f"loaded {description} from {path}"


HUB_HOST = "huggingface.co"  # timm's hub; torchvision's downloads go through urllib and the socket timeout
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, name lookup included
    (run in a thread: a lookup without a reachable name server can block far longer)."""
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


@contextmanager
def hub_access(host: str = HUB_HOST, timeout: float = 3.0) -> Iterator[None]:
    """Weight downloads inside this block fail within seconds on a machine without internet.

    One connection attempt to ``host`` first; when it fails, the Hugging Face hub is put in
    offline mode (files already in its cache still load) and sockets time out after
    ``timeout`` seconds, instead of the hub's retries with back-off (about a minute). Behind a
    proxy (``HTTPS_PROXY``, ``ALL_PROXY``) nothing is changed: the proxy decides.
    """
    if any(os.environ.get(v) for v in _PROXY_VARIABLES) or _can_connect(host, 443, timeout):
        yield
        return
    import huggingface_hub.constants as hub

    offline, default_timeout = hub.HF_HUB_OFFLINE, socket.getdefaulttimeout()
    hub.HF_HUB_OFFLINE = True
    socket.setdefaulttimeout(timeout)
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = offline
        socket.setdefaulttimeout(default_timeout)
