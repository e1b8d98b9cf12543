"""STEGO checkpoints in the authors' released layout (``unseg docs checkpoints``), written atomically and read back.

Layout (a Lightning checkpoint's ``state_dict`` and ``hyper_parameters``)::

    state_dict
      net.model.*                         the frozen backbone (DINO keys); optional here
      net.cluster1.0.{weight,bias}        head, linear branch
      net.cluster2.{0,2}.{weight,bias}    head, MLP branch
      cluster_probe.clusters              (n_classes + extra_clusters, dim)
      linear_probe.{weight,bias}          (n_classes, dim, 1, 1)
    hyper_parameters
      n_classes, dim, feat_dim, cfg       (cfg: the run's config as a plain dict)

Released checkpoints also hold ``train_cluster_probe.*`` and ``decoder.*`` (unused at
evaluation; ignored here) and keep ``dim`` inside ``cfg``. Sizes are read from the tensors;
the stored hyper-parameters must agree with them. The backbone is loaded separately, from
the same file, by ``unseg.create_backbone(name, weights=path)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...backbones import Backbone
from ...backbones.safe_load import read_checkpoint, to_plain
from ...config import dump_config
from ...errors import WeightsError
from ...io import save_torch
from .model import ClusterProbe, LinearProbe, StegoHead

__all__ = ["save_stego", "load_stego", "stego_hparams", "stego_state_dict", "HEAD_PREFIX", "BACKBONE_PREFIX"]

HEAD_PREFIX = "net."
BACKBONE_PREFIX = "net.model."
_PARTS = {"net.": "head", "cluster_probe.": "cluster probe", "linear_probe.": "linear probe"}


def stego_hparams(n_classes: int, dim: int, feat_dim: int, config: Any) -> dict[str, Any]:
    """The ``hyper_parameters`` entry: sizes, and the config (a dataclass or mapping) as a plain dict."""
    return {"n_classes": n_classes, "dim": dim, "feat_dim": feat_dim, "cfg": dump_config(config)}


def stego_state_dict(
    head: StegoHead, cluster_probe: ClusterProbe, linear_probe: LinearProbe, backbone: Backbone | None = None
) -> dict[str, torch.Tensor]:
    """The modules' tensors under STEGO's key names (with the backbone's under ``net.model.`` if given)."""
    state: dict[str, torch.Tensor] = {}
    if backbone is not None:
        state.update({BACKBONE_PREFIX + k: v for k, v in backbone.weight_state_dict().items()})
    for prefix, module in (("net.", head), ("cluster_probe.", cluster_probe), ("linear_probe.", linear_probe)):
        state.update({prefix + k: v for k, v in module.state_dict().items()})
    return {k: v.detach().cpu() for k, v in state.items()}


def save_stego(
    path: str | Path,
    head: StegoHead,
    cluster_probe: ClusterProbe,
    linear_probe: LinearProbe,
    config: Any,
    backbone: Backbone | None = None,
) -> None:
    """Write a checkpoint in STEGO's layout; a reader never sees a half-written file."""
    hparams = stego_hparams(linear_probe.out_channels, head.dim, head.dim_in, config)
    save_torch(
        {"state_dict": stego_state_dict(head, cluster_probe, linear_probe, backbone), "hyper_parameters": hparams}, path
    )


def load_stego(
    path: str | Path, n_classes: int | None = None, dim: int | None = None, trust_checkpoint: bool = False
) -> tuple[StegoHead, ClusterProbe, LinearProbe, dict[str, Any]]:
    """(head, cluster probe, linear probe, meta) of a STEGO checkpoint, in eval mode.

    ``n_classes`` / ``dim``, when given, must be those of the checkpoint. ``meta`` holds
    ``n_classes``, ``dim``, ``feat_dim``, ``n_clusters``, ``extra_clusters``, ``config`` (a
    plain dict) and ``has_backbone``. Released checkpoints pickle their config with
    omegaconf: the safe loader reads it without omegaconf and without running code from the
    file; ``trust_checkpoint`` unpickles fully instead (then omegaconf must be installed).
    """
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise WeightsError(f"STEGO checkpoint {path} has no 'state_dict' (keys: {', '.join(map(str, ckpt))[:200]})")
    head_w = _tensor(state, "net.cluster1.0.weight", path)
    sizes = {
        "dim": head_w.shape[0],
        "feat_dim": head_w.shape[1],
        "n_classes": _tensor(state, "linear_probe.weight", path).shape[0],
        "n_clusters": _tensor(state, "cluster_probe.clusters", path).shape[0],
    }
    hparams = to_plain(ckpt.get("hyper_parameters") or {})
    hparams = hparams if isinstance(hparams, dict) else {}
    config = hparams.get("cfg")
    config = config if isinstance(config, dict) else {}
    stored = {"n_classes": hparams.get("n_classes"), "dim": hparams.get("dim", config.get("dim"))}
    for key, value in stored.items():
        if value is not None and value != sizes[key]:
            raise WeightsError(
                f"STEGO checkpoint {path} is inconsistent: hyper-parameters say {key}={value}, "
                f"its tensors have {key}={sizes[key]}"
            )
    requested = {"n_classes": n_classes, "dim": dim}
    if any(v is not None and v != sizes[k] for k, v in requested.items()):
        want = ", ".join(f"{k}={v}" for k, v in requested.items() if v is not None)
        raise WeightsError(
            f"STEGO checkpoint {path} was trained with n_classes={sizes['n_classes']}, "
            f"dim={sizes['dim']}; requested {want}"
        )
    dropout = config.get("dropout")
    head = StegoHead(sizes["feat_dim"], sizes["dim"], dropout if isinstance(dropout, float) else 0.1)
    cluster_probe = ClusterProbe(sizes["dim"], sizes["n_clusters"])
    linear_probe = LinearProbe(sizes["dim"], sizes["n_classes"])
    for prefix, module in (("net.", head), ("cluster_probe.", cluster_probe), ("linear_probe.", linear_probe)):
        _load_part(module, state, prefix, path)
    meta = {
        **sizes,
        "extra_clusters": sizes["n_clusters"] - sizes["n_classes"],
        "config": config,
        "has_backbone": any(k.startswith(BACKBONE_PREFIX) for k in state),
    }
    return head.eval(), cluster_probe.eval(), linear_probe.eval(), meta


def _tensor(state: Mapping[str, Any], key: str, path: str | Path) -> torch.Tensor:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        found = sorted({k.split(".")[0] for k in state})
        raise WeightsError(
            f"STEGO checkpoint {path} lacks {key!r}; its state_dict holds {', '.join(found)} (not a STEGO checkpoint?)"
        )
    return value


def _load_part(module: nn.Module, state: Mapping[str, Any], prefix: str, path: str | Path) -> None:
    """Load ``module`` from the keys under ``prefix`` (the head skips the backbone's ``net.model.``)."""
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(BACKBONE_PREFIX)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"STEGO checkpoint {path}: the {_PARTS[prefix]} does not fit ({exc})") from None
