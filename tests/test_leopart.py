"""Leopart: crop boxes, Sinkhorn and the queue by hand, schedules, loss, training, resume, checkpoints, configs."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from torch.utils.data import default_collate
from torchvision.ops import roi_align

from unseg.backbones import create_backbone
from unseg.config import load_config, shipped_configs
from unseg.datasets import create_dataset
from unseg.errors import ConfigError
from unseg.evaluation.clustering import evaluate_clustering
from unseg.features import extract_features, foreground_mask
from unseg.features.cache import cached_masks
from unseg.methods.leopart import (
    CropConfig,
    CropError,
    EmbeddingQueue,
    LeopartConfig,
    MultiCrop,
    build_module,
    cosine_schedule,
    save_leopart,
    sinkhorn,
    train_leopart,
)
from unseg.methods.leopart.crops import intersection_area

NO_PHOTOMETRIC = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)

pytestmark = pytest.mark.usefixtures("tiny_leopart")  # every test on one thread, the tiny ViT registered


def smooth_image(width: int = 160, height: int = 120) -> Image.Image:
    """Low-frequency colour pattern: bilinear resampling at any scale reproduces it closely."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([np.sin(3 * x + 1), np.cos(2 * y - 0.5), np.sin(2 * x + 3 * y)], -1)
    return Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8))


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(next((run / "logs").rglob("metrics.csv"))) as fh:
        return list(csv.DictReader(fh))


# --- crops ----------------------------------------------------------------------------------------


def test_crop_boxes_roi_align_to_the_same_pixels():
    cfg = CropConfig(global_size=64, local_size=32, **NO_PHOTOMETRIC)
    multicrop = MultiCrop(cfg, mean=(0, 0, 0), std=(1, 1, 1), stride=16)
    image = smooth_image()
    torch.manual_seed(0)
    worst = 0.0
    for _ in range(5):
        out = multicrop(image)
        for g in range(cfg.num_global):
            for v, crop in enumerate(out["crops"]):
                box_g, box_v = out["boxes_global"][g, v], out["boxes_crop"][g, v]
                assert (box_g >= -1e-4).all() and (box_g <= 64 + 1e-4).all()
                assert (box_v >= -1e-4).all() and (box_v <= crop.shape[-1] + 1e-4).all()
                seen_by_g = roi_align(out["crops"][g][None], [box_g[None]], 7, aligned=True)
                seen_by_v = roi_align(crop[None], [box_v[None]], 7, aligned=True)
                worst = max(worst, (seen_by_g - seen_by_v).abs().max().item())
    assert worst < 0.03  # pixel values in [0, 1]; only the two resamplings differ


def test_every_crop_overlaps_every_global_crop():
    cfg = CropConfig(global_size=64, local_size=32, min_intersection=0.05, **NO_PHOTOMETRIC)
    multicrop = MultiCrop(cfg, (0, 0, 0), (1, 1, 1), 16)
    image = smooth_image(100, 80)
    torch.manual_seed(1)
    for _ in range(30):
        boxes = multicrop.sample_boxes(image)
        assert intersection_area(boxes[1], boxes[:1]).item() > 2 * 0.05 * 8000  # the global pair: twice (authors)
        for i in range(2, len(boxes)):
            assert (intersection_area(boxes[i], boxes[:2]) > 0.05 * 8000).all()


def test_crops_that_cannot_overlap_and_sizes_off_the_stride_are_clear_errors():
    cfg = CropConfig(
        global_size=64,
        local_size=32,
        global_scale=(0.01, 0.01),
        local_scale=(0.01, 0.01),
        min_intersection=0.2,
        max_tries=20,
    )
    with pytest.raises(CropError, match=r"global crop 1 .*0\.01, 0\.01.*of a 80x60 image in 20 tries"):
        MultiCrop(cfg, (0, 0, 0), (1, 1, 1), 16)(smooth_image(80, 60))
    with pytest.raises(ConfigError, match="'crops.local_size' = 40 is not a multiple of the backbone stride 16"):
        MultiCrop(CropConfig(global_size=64, local_size=40), (0, 0, 0), (1, 1, 1), 16)


# --- Sinkhorn and the queue -----------------------------------------------------------------------


def authors_sinkhorn(scores: np.ndarray, eps: float, iterations: int) -> np.ndarray:
    """Leopart's / SwAV's formulation on a (K, B) matrix, transposed back to (B, K)."""
    q = np.exp(scores / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q *= (1 / k / q.sum(axis=1))[:, None]  # rows: prototypes to 1/K
        q *= (1 / b / q.sum(axis=0))[None]  # columns: samples to 1/B
    return (q / q.sum(axis=0, keepdims=True)).T


def test_sinkhorn_marginals_and_the_authors_formulation():
    torch.manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(50, 7), dim=1)  # cosine-like scores in [-1, 1]
    q = sinkhorn(scores, eps=0.05, iterations=3)
    assert np.allclose(q.numpy(), authors_sinkhorn(scores.double().numpy(), 0.05, 3), atol=1e-5)
    # our orientation (N samples, K prototypes): the plan P = q / N has row (sample) sums 1/N exactly and
    # column (prototype) sums 1/K at convergence - the transpose of the (K, B) code's rows 1/K, columns 1/B
    plan = q / 50
    assert torch.allclose(plan.sum(1), torch.full((50,), 1 / 50), atol=1e-7)
    imbalance = lambda p: (p.sum(0) * 7 - 1).abs().max().item()  # noqa: E731  (0 = balanced prototypes)
    assert imbalance(plan) < 0.5 * imbalance(sinkhorn(scores, eps=0.05, iterations=0) / 50)  # 3 iterations: nearer
    converged = sinkhorn(scores, eps=0.05, iterations=200) / 50
    assert torch.allclose(converged.sum(0), torch.full((7,), 1 / 7), rtol=1e-4)
    assert torch.allclose(converged.sum(1), torch.full((50,), 1 / 50), atol=1e-7)


def test_queue_fills_then_drops_its_oldest_rows():
    queue = EmbeddingQueue(num_queues=2, length=5, dim=1)
    rows = lambda *ids: torch.tensor(ids, dtype=torch.float32)[:, None]  # noqa: E731
    queue.push(0, rows(1, 2, 3), max_push=2)  # 2 of the 3, in random order, in front
    first = set(queue.embeddings[0, :2, 0].tolist())
    assert first < {1, 2, 3} and len(first) == 2 and int(queue.filled[0]) == 2 and not queue.full(0)
    queue.push(0, rows(4, 5, 6), max_push=10)
    assert set(queue.embeddings[0, :3, 0].tolist()) == {4, 5, 6}
    assert set(queue.embeddings[0, 3:, 0].tolist()) == first and queue.full(0)
    queue.push(0, rows(7), max_push=10)
    assert queue.embeddings[0, 0, 0] == 7 and set(queue.embeddings[0, 1:4, 0].tolist()) == {4, 5, 6}
    assert queue.embeddings[0, 4, 0].item() in first  # the oldest row left; one of the first two remains
    queue.push(0, rows(*range(10, 30)), max_push=40)  # never more than the queue holds
    assert set(queue.embeddings[0, :, 0].tolist()) <= set(range(10, 30))
    assert int(queue.filled[1]) == 0 and not queue.full(1)  # queues are independent


def test_foreground_mask_keeps_the_salient_mass_and_drops_specks():
    saliency = torch.full((1, 8, 8), 0.01)
    saliency[0, 1:5, 1:5] = 1.0  # a 4x4 object
    saliency[0, 7, 7] = 0.6  # a speck, salient enough to survive the threshold on its own
    mask = foreground_mask(saliency, keep_mass=0.6, sigma=0.6, kernel=7, max_dropped=2)
    assert mask[0, 7, 7] == 0 and mask[0, 2:4, 2:4].all() and mask[0, 5:, :].sum() == 0
    mask_without_dropping = foreground_mask(saliency, keep_mass=0.95, sigma=0.6, kernel=7, max_dropped=0)
    assert mask_without_dropping[0, 7, 7] == 1


# --- schedules ------------------------------------------------------------------------------------


def test_cosine_schedules_at_start_middle_and_end():
    # weight decay 0.04 -> 0.5 and momentum 0.9995 -> 1 over 100 steps
    assert cosine_schedule(0.04, 0.5, 0, 100) == pytest.approx(0.04)
    assert cosine_schedule(0.04, 0.5, 50, 100) == pytest.approx(0.27)  # the midpoint
    assert cosine_schedule(0.04, 0.5, 100, 100) == pytest.approx(0.5)
    assert cosine_schedule(0.9995, 1.0, 50, 100) == pytest.approx(0.99975)
    assert cosine_schedule(0.9995, 1.0, 25, 100) == pytest.approx(1 - 0.0005 * (1 + math.sqrt(0.5)) / 2)
    assert cosine_schedule(0.9995, 1.0, 200, 100) == 1.0


# --- a training run, resumed, and its checkpoints ---------------------------------------------------


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.should_stop = True


def camvid_val(root: Path, images: Callable[[Path, int], Path]) -> Path:
    """Two labelled 64x48 images (from ``images(folder, n)``) in CamVid's layout (the validation split)."""
    images(root / "val", 2)
    (root / "valannot").mkdir()
    for i in range(2):
        Image.fromarray(np.repeat(np.arange(64, dtype=np.uint8)[None] // 22, 48, 0)).save(
            root / "valannot" / f"img{i:02d}.png"
        )
    (root / "val.txt").write_text("img00\nimg01\n")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_leopart) -> tuple[LeopartConfig, Path]:
    """Two epochs of two steps, with in-training validation after each; the queue (20) fills in epoch 1."""
    tmp = tmp_path_factory.mktemp("leopart")
    cfg = tiny_leopart.config(
        tiny_leopart.images(tmp / "images"),
        val={
            "dataset": "camvid",
            "root": str(camvid_val(tmp / "cv", tiny_leopart.images)),
            "input_size": 64,
            "mask_size": 16,
            "ks": [4],
            "seeds": [0],
            "batch_size": 2,
        },
    )
    train_leopart(cfg, tmp / "run")
    return cfg, tmp / "run"


def test_training_writes_config_logs_scheduled_values_and_validation(run, tmp_path):
    cfg, out = run
    assert load_config(LeopartConfig, out / "config.yaml") == cfg
    rows = read_metrics(out)
    steps = [r for r in rows if r.get("train/lr_backbone")]
    assert [int(r["step"]) for r in steps] == [0, 1, 2, 3]
    for r in steps:  # T = 4 steps: the cosines by hand (logged as float32)
        half_cosine = (1 + math.cos(math.pi * int(r["step"]) / 4)) / 2
        assert float(r["train/lr_backbone"]) == pytest.approx(1e-5 * half_cosine, rel=1e-6, abs=1e-12)
        assert float(r["train/lr_head"]) == pytest.approx(1e-4 * half_cosine, rel=1e-6, abs=1e-12)
        assert float(r["train/weight_decay"]) == pytest.approx(0.5 - 0.46 * half_cosine, rel=1e-6)
        assert float(r["train/momentum"]) == pytest.approx(1 - 0.0005 * half_cosine, rel=1e-7)
    scheduler = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 4 and scheduler["_last_lr"] == pytest.approx([0.0] * 4, abs=1e-15)  # the end
    val = [float(r["val/K=4_miou"]) for r in rows if r.get("val/K=4_miou")]
    assert len(val) == 2
    # the last epoch's score is the final teacher's: redo its overclustering from the saved weights
    teacher = create_backbone(cfg.backbone, weights=out / "leopart.ckpt", role="teacher")
    dataset = create_dataset(cfg.val.dataset, cfg.val.root, cfg.val.split)
    cache = extract_features(
        teacher,
        dataset,
        cfg.val.input_size,
        cache_root=tmp_path,
        batch_size=2,
        device="cpu",
        num_workers=0,
        progress=False,
    )
    masks = cached_masks(cache, dataset, (cfg.val.mask_size,) * 2)
    (again,) = evaluate_clustering(cache, masks, dataset.num_classes, ks=cfg.val.ks, seeds=cfg.val.seeds)
    assert val[-1] == pytest.approx(again.miou_mean, rel=1e-5)


def test_resume_from_an_epoch_checkpoint_matches_the_uninterrupted_run(run, tmp_path):
    cfg, out = run
    train_leopart(cfg, tmp_path, callbacks=[StopAfterFirstEpoch()])
    first = torch.load(tmp_path / "leopart.ckpt", weights_only=True)
    assert first["global_step"] == 2
    queue = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["leopart_queue"]
    assert queue["embeddings"].shape == (1, 2, 20, 16) and (queue["filled"] == 20).all()  # full: used in epoch 2
    train_leopart(cfg, tmp_path, resume="last")
    resumed = torch.load(tmp_path / "leopart.ckpt", weights_only=True)
    whole = torch.load(out / "leopart.ckpt", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 4
    assert resumed["state_dict"].keys() == whole["state_dict"].keys()
    for key, value in whole["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key], value, rtol=0, atol=1e-7), key
    assert not torch.equal(first["state_dict"]["model.norm.weight"], whole["state_dict"]["model.norm.weight"])


def test_checkpoints_are_leopart_layout_loaded_by_create_backbone_and_timm(run):
    cfg, out = run
    for path in (out / "leopart.ckpt", out / "checkpoints" / "last.ckpt"):
        state = torch.load(path, weights_only=False)["state_dict"]
        for role in ("model", "teacher"):
            assert {
                f"{role}.cls_token",
                f"{role}.blocks.5.attn.qkv.weight",
                f"{role}.projection_head.0.weight",
                f"{role}.projection_head.4.weight",
                f"{role}.prototypes.weight",
            } <= state.keys()
        assert not any(".backbone." in k for k in state)
        # "auto" reads the student, as Leopart's evaluation does
        for role, prefix in (("auto", "model."), ("teacher", "teacher."), ("student", "model.")):
            loaded = create_backbone(cfg.backbone, weights=path, role=role).weight_state_dict()
            for key, value in loaded.items():
                assert torch.equal(value, state[prefix + key]), (role, key)
        assert not torch.equal(state["teacher.norm.weight"], state["model.norm.weight"])  # an EMA, not a copy
        # timm, as Leopart's README: strip the prefix, load non-strictly; only the heads differ
        vit = timm.create_model("test_vit")
        result = vit.load_state_dict(
            {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("teacher.")}, strict=False
        )
        assert sorted(result.missing_keys) == ["head.bias", "head.weight"]
        assert sorted(result.unexpected_keys) == [
            "projection_head.0.bias",
            "projection_head.0.weight",
            "projection_head.2.bias",
            "projection_head.2.weight",
            "projection_head.4.bias",
            "projection_head.4.weight",
            "prototypes.weight",
        ]


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path, tiny_leopart):
    cfg = tiny_leopart.config(tmp_path, mask="all", queue_length=0, drop_path_rate=0.0)
    module = build_module(cfg)
    multicrop = MultiCrop(cfg.crops, module.model.backbone.mean, module.model.backbone.std, 16)
    torch.manual_seed(0)
    batch = default_collate([multicrop(smooth_image(64, 48)) for _ in range(4)])
    optimiser = torch.optim.AdamW(module.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = module.loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        module.update_teacher(0.9995)
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_cnn_backbone_trains_on_its_saliency_proxy_and_loads_back(tmp_path, tiny_leopart):
    cfg = tiny_leopart.config(tmp_path, backbone="efficientnet_lite0", crops={"global_size": 64})
    module = build_module(cfg)
    assert not module.model.backbone.model.conv_head.weight.requires_grad  # unused by dense features
    multicrop = MultiCrop(cfg.crops, module.model.backbone.mean, module.model.backbone.std, 16)
    batch = default_collate([multicrop(smooth_image(64, 48)) for _ in range(2)])
    module.train()
    module.loss(batch).backward()
    assert module.model.backbone.model.conv_stem.weight.grad.abs().sum() > 0  # the loss reaches the stem
    save_leopart(module, tmp_path / "leopart.ckpt")
    loaded = create_backbone("efficientnet_lite0", weights=tmp_path / "leopart.ckpt", role="student")
    assert torch.equal(loaded.model.conv_stem.weight, module.model.backbone.model.conv_stem.weight)


@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_frozen_batchnorm_keeps_the_pretrained_statistics_and_trains_the_affine_parameters(
    tmp_path, batchnorm, tiny_leopart
):
    cfg = tiny_leopart.config(tmp_path, backbone="efficientnet_lite0", crops={"global_size": 64}, batchnorm=batchnorm)
    module = build_module(cfg)
    bn = module.model.backbone.model.bn1  # the stem's batch norm, in both networks
    norms = (bn, module.teacher.backbone.model.bn1)
    means = [n.running_mean.clone() for n in norms]
    multicrop = MultiCrop(cfg.crops, module.model.backbone.mean, module.model.backbone.std, 16)
    batch = default_collate([multicrop(smooth_image(64, 48)) for _ in range(2)])
    module.train()
    module.loss(batch).backward()
    moved = [not torch.equal(n.running_mean, mean) for n, mean in zip(norms, means, strict=True)]
    assert moved == ([False, False] if batchnorm == "frozen" else [True, True])
    assert bn.weight.grad.abs().sum() > 0  # affine parameters train either way
    assert module.model.projection_head.training and module.model.backbone.training


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "none"])
def test_the_logger_key_selects_what_the_run_logs(tmp_path, tiny_leopart, logger):
    """csv: a metrics.csv row per step; tensorboard: event files, or without the package a one-line error before
    anything is written; none: no logs folder. The checkpoints are written either way."""
    from importlib.util import find_spec

    from unseg.errors import MissingExtraError

    cfg = tiny_leopart.config(tiny_leopart.images(tmp_path / "images"), epochs=1, logger=logger)
    out = tmp_path / "run"
    if logger == "tensorboard" and not (find_spec("tensorboard") or find_spec("tensorboardX")):
        with pytest.raises(MissingExtraError, match=r"^logger=tensorboard needs .*pip install tensorboard [^\n]*$"):
            train_leopart(cfg, out)
        assert not out.exists()
        return
    train_leopart(cfg, out)
    assert torch.load(out / "leopart.ckpt", weights_only=True)["global_step"] == 2
    if logger == "csv":
        assert [int(r["step"]) for r in read_metrics(out) if r.get("train/loss")] == [0, 1]
    elif logger == "tensorboard":
        assert list((out / "logs" / "version_0").glob("events.out.tfevents.*"))
    else:
        assert not (out / "logs").exists()


# --- bad input and configs ------------------------------------------------------------------------


def test_dataset_smaller_than_one_batch_is_a_clear_error(tmp_path, tiny_leopart):
    images = tiny_leopart.images(tmp_path, 3)
    with pytest.raises(ConfigError, match=r"has 3 images: not one batch of batch_size=4 .* lower key 'batch_size'"):
        train_leopart(tiny_leopart.config(images, batch_size=4), tmp_path / "run")
    with pytest.raises(ConfigError, match="key 'crops_for_assign'"):
        train_leopart(tiny_leopart.config(images, crops_for_assign=[0, 2]), tmp_path / "run")


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["crops.global_sise=64"], r"unknown key 'crops\.global_sise'"),
        (["batch_size=many"], r"key 'batch_size' expects int, got 'many'"),
        (["mask=center"], r"key 'mask' expects one of 'fg', 'bg', 'all'"),
        (["val.ks=300"], r"key 'val\.ks' expects list\[int\]"),
    ],
)
def test_config_errors_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(LeopartConfig, "leopart/camvid_effnet", overrides)


def test_shipped_configs_load_with_the_papers_numbers():
    configs = {name.split("/")[1]: load_config(LeopartConfig, name) for name in shipped_configs("leopart")}
    assert set(configs) == {"imagenet100_vits16", "coco_vits16", "voc_trainaug_vits16", "coco_vitb8", "camvid_effnet"}
    for name in ("imagenet100_vits16", "coco_vits16", "voc_trainaug_vits16", "coco_vitb8"):
        cfg = configs[name]
        assert (cfg.devices, cfg.num_prototypes, cfg.queue_length, cfg.mask, cfg.seed) == (2, 300, 8192, "fg", 400)
        assert (cfg.val.dataset, cfg.val.input_size, cfg.val.ks) == ("voc12", 448, [500, 300, 21])
    assert configs["imagenet100_vits16"] == LeopartConfig(devices=2)  # the defaults are the paper's main run
    assert (configs["voc_trainaug_vits16"].epochs, configs["voc_trainaug_vits16"].split) == (500, "trainaug")
    b8 = configs["coco_vitb8"]
    assert (b8.backbone, b8.batch_size, b8.lr_backbone, b8.lr_head) == ("dino_vitb8", 16, 5e-6, 5e-5)
    camvid = configs["camvid_effnet"]
    assert (camvid.backbone, camvid.dataset, camvid.val.dataset) == ("efficientnet_lite0", "camvid", "camvid")
