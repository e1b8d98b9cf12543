"""Reading checkpoints safely (``unseg docs checkpoints``): files whose unpickling would run code are
refused before anything runs; Lightning files whose hyper-parameters are pickled objects of
modules that are not installed still load; ``.safetensors`` files load; ``trust_checkpoint``
is the only way to full unpickling; and every load says which network it took.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unseg.backbones import create_backbone
from unseg.backbones.safe_load import PickledObject, read_checkpoint, to_plain
from unseg.backbones.weights import load_backbone_weights
from unseg.cli import _source, build_parser, main
from unseg.errors import WeightsError
from unseg.methods.stego import load_stego

TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nets() -> dict[str, dict[str, torch.Tensor]]:
    """ViT-S/16 state dicts (DINO's keys) of two different random networks."""
    out = {}
    for seed, role in ((1, "teacher"), (2, "student")):
        torch.manual_seed(seed)
        out[role] = {
            k: v.clone() for k, v in create_backbone("dino_vits16", weights="random").weight_state_dict().items()
        }
    return out


def loads_as(path, state: dict[str, torch.Tensor], **kwargs) -> str:
    """Load ``path`` into a fresh ViT-S/16; every tensor must be ``state``'s. Returns the load line."""
    backbone = create_backbone("dino_vits16", weights="random")
    line = load_backbone_weights(backbone, path, **kwargs)
    got = backbone.weight_state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) for k in state)
    return line


# ----------------------------------------------- pickled objects of missing modules


@pytest.fixture
def missing_module(tmp_path, monkeypatch):
    """Pickle objects of a module (omegaconf- and Lightning-like classes), then make the module
    unimportable: yields a function that pickles its argument builder into a file."""
    package = tmp_path / "pkg"
    (package / "fakeconf").mkdir(parents=True)
    (package / "fakeconf" / "__init__.py").write_text(
        textwrap.dedent('''
        class AttributeDict(dict):
            """Lightning's hyper-parameter dict: a dict subclass."""

        class ValueNode:
            def __init__(self, value):
                self._val, self._parent = value, None

        class DictConfig:
            """omegaconf's layout: __getstate__ with _content (key -> node) and _metadata."""
            def __init__(self, content):
                self._metadata = ValueNode("meta")
                self._content = {k: DictConfig(v) if isinstance(v, dict) else ValueNode(v) for k, v in content.items()}
                self._parent = None

            def __getstate__(self):
                return dict(self.__dict__)

            def __setstate__(self, state):
                raise AssertionError("the real class must never run while loading")
    ''')
    )
    monkeypatch.syspath_prepend(str(package))
    import fakeconf

    yield fakeconf
    sys.modules.pop("fakeconf", None)


def _unimport(module) -> None:
    sys.modules.pop(module.__name__, None)
    sys.path[:] = [p for p in sys.path if not p.endswith("pkg")]
    for file in pathlib.Path(module.__file__).parent.iterdir():
        file.unlink()
    with pytest.raises(ImportError):
        __import__(module.__name__)


def test_lightning_checkpoint_with_hparams_of_a_missing_module_loads(nets, tmp_path, missing_module):
    conf = missing_module
    cfg = {"dim": 70, "dropout": 0.1, "model_type": "vit_small", "aug": {"crop": 224, "flip": True}}
    hparams = conf.AttributeDict(n_classes=27, cfg=conf.DictConfig(cfg), lr=5e-4)
    state = {
        **{f"model.{k}": v for k, v in nets["student"].items()},
        **{f"teacher.{k}": v for k, v in nets["teacher"].items()},
    }
    path = tmp_path / "leopart.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": hparams,
            "hparams_type": type(hparams),
            "callbacks": {"best": np.float64(0.5), "scores": np.arange(3)},
            "epoch": 3,
        },
        path,
    )
    _unimport(conf)
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe loader refuses it: the fallback below is needed
        torch.load(path, weights_only=True)

    line = loads_as(path, nets["student"])
    assert line == f"loaded student network (prefix 'model.') of a Lightning checkpoint from {path}"
    loads_as(path, nets["teacher"], role="teacher")
    ckpt = read_checkpoint(path)
    assert isinstance(ckpt["hyper_parameters"], PickledObject)
    assert ckpt["hyper_parameters"].pickled_class == "fakeconf.AttributeDict"
    assert to_plain(ckpt["hyper_parameters"]) == {"n_classes": 27, "cfg": cfg, "lr": 5e-4}
    assert ckpt["callbacks"]["best"] == 0.5 and np.array_equal(ckpt["callbacks"]["scores"], np.arange(3))


def test_stego_checkpoint_with_config_of_a_missing_module_loads(tmp_path, missing_module):
    conf = missing_module
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    state = {
        "net.cluster1.0.weight": r(70, 384, 1, 1),
        "net.cluster1.0.bias": r(70),
        "net.cluster2.0.weight": r(384, 384, 1, 1),
        "net.cluster2.0.bias": r(384),
        "net.cluster2.2.weight": r(70, 384, 1, 1),
        "net.cluster2.2.bias": r(70),
        "cluster_probe.clusters": r(27, 70),
        "linear_probe.weight": r(27, 70, 1, 1),
        "linear_probe.bias": r(27),
    }
    hparams = conf.AttributeDict(n_classes=27, cfg=conf.DictConfig({"dim": 70, "dropout": 0.25, "extra_clusters": 0}))
    path = tmp_path / "cocostuff27.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    _unimport(conf)
    head, cluster_probe, linear_probe, meta = load_stego(path)
    assert meta["config"] == {"dim": 70, "dropout": 0.25, "extra_clusters": 0}
    assert head.dropout.p == 0.25  # read from the pickled config
    assert torch.equal(cluster_probe.clusters.detach(), state["cluster_probe.clusters"])
    assert torch.equal(linear_probe.state_dict()["weight"], state["linear_probe.weight"])


def test_dino_checkpoint_with_pickled_namespace_loads_teacher(nets, tmp_path):
    ckpt = {
        "teacher": {f"backbone.{k}": v for k, v in nets["teacher"].items()},
        "student": {f"module.backbone.{k}": v for k, v in nets["student"].items()},
        "args": argparse.Namespace(arch="vit_small", patch_size=16),
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    line = loads_as(path, nets["teacher"])
    assert line == f"loaded teacher network (prefix 'backbone.') of a DINO checkpoint from {path}"
    assert "student network (prefix 'module.backbone.')" in loads_as(path, nets["student"], role="student")
    args = read_checkpoint(path)["args"]
    assert not isinstance(args, argparse.Namespace)  # a stand-in: the class was not used
    assert to_plain(args) == {"arch": "vit_small", "patch_size": 16}


# --------------------------------------------------------- files that would run code


class _Payload:
    """Unpickling it calls ``call(*args)``."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(target: pathlib.Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, f"touch {target}"),
        "eval": _Payload(eval, f"open({str(target)!r}, 'w').write('x')"),
        "Path.write_text": _Payload(pathlib.Path.write_text, target, "x"),
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["os.system", "eval", "Path.write_text"])
def test_checkpoint_that_would_write_a_file_is_refused(nets, tmp_path, kind, protocol):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    state = {f"model.{k}": v for k, v in nets["student"].items()}
    torch.save(
        {"state_dict": state, "hyper_parameters": {"x": _payloads(target)[kind]}}, path, pickle_protocol=protocol
    )
    with pytest.raises(WeightsError) as info:
        create_backbone("dino_vits16", weights=path)
    message = str(info.value)
    assert str(path) in message and "not loaded" in message and "--trust-checkpoint" in message
    assert not target.exists()


def test_cli_refuses_a_code_running_stego_checkpoint(tmp_path, capsys):
    target, path = tmp_path / "pwned", tmp_path / "evil_stego.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _payloads(target)["os.system"]}, path)
    code = main(
        ["segment", str(tmp_path), "--method", "stego", "--checkpoint", str(path), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and not target.exists()
    err = capsys.readouterr().err
    assert "not loaded" in err and "Traceback" not in err


def test_trust_checkpoint_unpickles_fully_with_a_warning(nets, tmp_path, caplog):
    target, path = tmp_path / "written", tmp_path / "trusted.pth"
    torch.save(
        {
            "teacher": {f"backbone.{k}": v for k, v in nets["teacher"].items()},
            "args": argparse.Namespace(lr=0.1),
            "side_effect": _payloads(target)["Path.write_text"],
        },
        path,
    )
    with caplog.at_level(logging.WARNING, logger="unseg.backbones.safe_load"):
        ckpt = read_checkpoint(path, trust_checkpoint=True)
    assert isinstance(ckpt["args"], argparse.Namespace) and target.read_text() == "x"  # it really ran
    assert any("--trust-checkpoint" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    target.unlink()
    loads_as(path, nets["teacher"], trust_checkpoint=True)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, its files still exist
def test_torchscript_archive_is_not_executed(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(WeightsError, match="TorchScript"):
        read_checkpoint(path)


def test_every_command_reading_weights_or_checkpoints_has_trust_checkpoint(tmp_path):
    def parsers(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from ((f"{name} {n}".strip(), p) for n, p in parsers(sub))
        yield "", parser

    checked = []
    for name, parser in parsers(build_parser()):
        options = {o for a in parser._actions for o in a.option_strings}
        if options & {"--weights", "--checkpoint"}:
            assert "--trust-checkpoint" in options, name
            checked.append(name)
    assert {"eval cluster", "eval stego", "segment", "extract"} <= set(checked)
    (tmp_path / "w.pth").write_bytes(b"")  # the option needs an existing file; nothing reads it here
    args = build_parser().parse_args(
        ["eval", "cluster", "--root", ".", "--weights", str(tmp_path / "w.pth"), "--trust-checkpoint"]
    )
    source = _source(args)  # the role left out falls through to the API's default
    assert args.trust_checkpoint and args.role is None and source.role == "auto" and source.trust_checkpoint


# ------------------------------------------------------------------- safetensors


def test_safetensors_backbone_file(nets, tmp_path):
    path = tmp_path / "dino_vits16.safetensors"
    save_file(nets["student"], str(path))
    assert "backbone (prefix '')" in loads_as(path, nets["student"])
    other = tmp_path / "leopart_student_named_otherwise.bin"  # detected by content, not by the name
    save_file({f"model.{k}": v for k, v in nets["student"].items()}, str(other))
    loads_as(other, nets["student"])


def test_truncated_safetensors_file(nets, tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(nets["student"], str(path))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        read_checkpoint(path)


# ------------------------------------------------------------------ which network


def test_load_is_logged_with_the_network(nets, tmp_path, caplog):
    path = tmp_path / "leopart.ckpt"
    torch.save(
        {
            "state_dict": {
                **{f"model.{k}": v for k, v in nets["student"].items()},
                **{f"teacher.{k}": v for k, v in nets["teacher"].items()},
            }
        },
        path,
    )
    with caplog.at_level(logging.INFO, logger="unseg.backbones"):
        create_backbone("dino_vits16", weights=path)
    assert f"loaded student network (prefix 'model.') of a Lightning checkpoint from {path}" in caplog.messages


def test_teacher_only_lightning_file_has_no_student(nets, tmp_path):
    path = tmp_path / "teacher_only.ckpt"
    torch.save({"state_dict": {f"teacher.{k}": v for k, v in nets["teacher"].items()}}, path)
    assert "teacher network" in loads_as(path, nets["teacher"])
    with pytest.raises(WeightsError, match="no student"):
        create_backbone("dino_vits16", weights=path, role="student")
