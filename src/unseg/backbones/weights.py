"""Load a backbone from any checkpoint layout (``unseg docs checkpoints``).

Supported, detected from the file's content:

- a plain backbone state dict (DINO ``*_pretrain.pth``, torchvision, efficientnet_pytorch),
  as a PyTorch file or a ``.safetensors`` file;
- a DINO training checkpoint (``teacher`` / ``student`` dicts, keys under ``backbone.``
  or ``module.backbone.``): the teacher by default, the network DINO releases;
- a Lightning checkpoint (``state_dict``): Leopart (``model.*`` student, ``teacher.*``):
  the student by default, the network Leopart's evaluation reads; STEGO (``net.model.*``).

The backbone is located by the prefix of its first key (e.g. ``cls_token`` for ViTs);
keys of heads and prototypes under that prefix are dropped; anything else that does
not fit raises a :class:`~unseg.errors.WeightsError` that names the file and the mismatch.
Files are read by :func:`unseg.backbones.safe_load.read_checkpoint`, which runs no code from them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import WeightsError
from .safe_load import read_checkpoint

if TYPE_CHECKING:
    from .base import Backbone

__all__ = ["ROLES", "candidate_state_dicts", "extract_backbone_state", "load_backbone_weights"]

ROLES = ("auto", "teacher", "student")
# (DINOv2 backbone files also hold ``mask_token``, used only in training; timm drops it too)
_HEAD_KEY = re.compile(r"(^|\.)(head|projection_head|prototypes|fc|classifier|_fc|mask_token)(\.|$)")
# first-key aliases of other layouts a backbone accepts (efficientnet_pytorch's names)
_ANCHOR_ALIASES = {"conv_stem.weight": ("_conv_stem.weight",)}


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
            raise WeightsError(
                f"DINO checkpoint has no {role!r} network (it has {', '.join(r for r in order if r in ckpt)})"
            )
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
            raise WeightsError(
                f"checkpoint holds backbones under {', '.join(map(repr, prefixes))}; none is the teacher"
                if not teachers
                else f"checkpoint holds several teacher backbones: {teachers}"
            )
        return teachers[0], "teacher"
    if len(others) == 1 or "model." in others:
        return (others[0] if len(others) == 1 else "model."), "student"
    raise WeightsError(
        f"checkpoint holds backbones under {', '.join(map(repr, prefixes))}; "
        "it is not clear which is the student (pass --weights-role teacher for the teacher)"
    )


def extract_backbone_state(
    ckpt: dict[str, Any], backbone: Backbone, role: str = "auto", source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone's own state dict out of any supported layout, and which network it is
    (e.g. "student network (prefix 'model.') of a Lightning checkpoint")."""
    target = backbone.weight_state_dict()
    first = next(iter(target))
    anchors = (first,) + _ANCHOR_ALIASES.get(first, ())
    for candidate in candidate_state_dicts(ckpt, role):  # the one found is read after the loop
        layout, network, state = candidate
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
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = {k: v for k, v in own.items() if k in target or not _HEAD_KEY.search(k)}
    description = f"{network + ' network' if network else 'backbone'} (prefix {prefix!r}) of a {layout}"
    if anchors[0] in own:  # native layout: check keys and shapes here, to name the mismatch
        _check_fits(own, backbone.weight_shapes(own), f"{source} ({description})", type(backbone).__name__)
    return own, description


def _flat_keys(ckpt: dict[str, Any]) -> list[str]:
    for _, _, state in candidate_state_dicts(ckpt, "auto"):
        return list(state)
    return []


def _check_fits(state: dict[str, Any], shapes: dict[str, torch.Size], source: str, arch: str) -> None:
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    wrong = [
        f"{k}: {tuple(getattr(state[k], 'shape', ()))} in file, {tuple(shapes[k])} expected"
        for k in shapes
        if k in state and getattr(state[k], "shape", None) != shapes[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensors of another shape (e.g. {'; '.join(wrong[:2])})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(
            f"{source} does not fit backbone {arch}: "
            + "; ".join(parts)
            + ". Is it a checkpoint of another architecture?"
        )


def load_backbone_weights(
    backbone: Backbone, path: str | Path, role: str = "auto", trust_checkpoint: bool = False
) -> str:
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
