"""STEGO: correspondence loss by hand, probes, training, checkpoints in the authors' layout, evaluation, configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseg.config import config_from_dict, dump_config, load_config
from unseg.errors import ConfigError, UnsegError, WeightsError
from unseg.features.cache import FeatureCache
from unseg.kinds import UsageError
from unseg.methods.stego import (
    CachedPairs,
    ClusterProbe,
    CorrespondenceConfig,
    ImagePairs,
    LinearProbe,
    StegoConfig,
    StegoHead,
    StegoModule,
    correspondence_terms,
    evaluate_stego,
    load_stego,
    negative_partners,
    save_stego,
    stego_codes,
    train_stego,
)
from unseg.methods.stego.loss import correspondence_term, feature_correlation


def constant_map(vector: list[float], batch: int = 2, size: int = 3) -> torch.Tensor:
    """(batch, C, size, size) map holding ``vector`` at every position."""
    return torch.tensor(vector, dtype=torch.float32)[None, :, None, None].expand(batch, -1, size, size).contiguous()


@pytest.fixture
def two_class_cache(tmp_path: Path, feature_cache) -> tuple[FeatureCache, np.ndarray, np.ndarray]:
    """8 images, 16-d features on a 6x6 grid: left half class 0 (direction a), right half class 1 (b), + noise.

    Returns (cache, masks (8, 6, 6), a hand-made kNN stand-in (8, 5): self first, then the others).
    """
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    feats = np.empty((8, 16, 6, 6), np.float32)
    feats[..., :3] = a[None, :, None, None]
    feats[..., 3:] = b[None, :, None, None]
    feats += rng.normal(scale=0.3, size=feats.shape).astype(np.float32)
    masks = np.zeros((8, 6, 6), np.uint8)
    masks[..., 3:] = 1
    knn = np.array([[i] + [(i + j) % 8 for j in range(1, 5)] for i in range(8)])
    return feature_cache(tmp_path / "cache", feats), masks, knn


# --- correspondence loss -------------------------------------------------------------------------


def test_aligned_codes_on_correlated_features_give_negative_loss_moved_by_the_shift():
    f = constant_map([1.0, 0.0, 0.0])  # F = 1 for every pair
    c = constant_map([0.3, -2.0])  # S = 1
    assert correspondence_term(f, f, c, c, 0.0, pointwise=False)[0].item() == pytest.approx(-1.0)
    loss, sim = correspondence_term(f, f, c, c, 0.3, pointwise=False)
    assert loss.item() == pytest.approx(-(1.0 - 0.3))  # -clamp(S) * (F - shift)
    assert sim.item() == pytest.approx(1.0)


def test_anti_aligned_codes_are_clamped_to_zero():
    f = constant_map([1.0, 0.0])
    c = constant_map([1.0, 2.0])
    for shift in (0.0, 0.5, 2.0):  # F - shift positive or negative: S = -1 clamps to 0 either way
        assert correspondence_term(f, f, c, -c, shift, pointwise=False)[0].item() == pytest.approx(0.0)


def test_partially_similar_codes_on_unrelated_features_are_pushed_apart():
    f1, f2 = constant_map([1.0, 0.0]), constant_map([0.0, 1.0])  # F = 0
    c1, c2 = constant_map([1.0, 0.0]), constant_map([0.5, math.sqrt(3) / 2])  # S = 0.5
    loss, _ = correspondence_term(f1, f2, c1, c2, 0.2, pointwise=False)
    assert loss.item() == pytest.approx(-0.5 * (0.0 - 0.2))  # positive: lowering S lowers the loss


def test_pointwise_normalisation_by_hand():
    # first image: positions a1=(1,0), a2=(0.6,0.8); second: b1=(1,0), b2=(0,1)
    f1 = torch.tensor([[1.0, 0.6], [0.0, 0.8]])[None, :, None, :]  # (1, C=2, 1, 2)
    f2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, :, None, :]
    plain = feature_correlation(f1, f2, pointwise=False).reshape(2, 2)
    assert torch.allclose(plain, torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    # rows minus their means [0.5, 0.7], plus the global mean 0.6
    pointwise = feature_correlation(f1, f2, pointwise=True).reshape(2, 2)
    assert torch.allclose(pointwise, torch.tensor([[1.1, 0.1], [0.5, 0.7]]))


def test_negative_partners_follow_the_authors_rule():
    # the rule written out: a seeded randperm, each fixed point moved to the next index mod n
    seen_repeat = False
    for n in range(2, 8):
        for seed in range(30):
            torch.manual_seed(seed)
            perm = torch.randperm(n)
            expected = torch.where(perm == torch.arange(n), perm + 1, perm) % n
            torch.manual_seed(seed)
            partners = negative_partners(n)
            assert torch.equal(partners, expected)
            assert not (partners == torch.arange(n)).any() and partners.min() >= 0 and partners.max() < n
            seen_repeat |= len(set(partners.tolist())) < n  # not always a permutation
    assert seen_repeat
    with pytest.raises(ValueError, match="at least 2"):
        negative_partners(1)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def plain_term(
    fa: torch.Tensor, fb: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor, shift: float, pointwise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss written out on sampled vectors (B, P, C): F and S as batched cosine matrices (B, P, Q)."""
    f = _unit(fa) @ _unit(fb).transpose(1, 2)
    if pointwise:
        f = f - f.mean(dim=2, keepdim=True) + f.mean()  # row means removed, global mean put back
    s = _unit(ca) @ _unit(cb).transpose(1, 2)
    return (-(s.clamp(min=0) * (f - shift))).mean(), s.mean()


def plain_terms(f1, f2, fnegs, c1, c2, cnegs, cfg: CorrespondenceConfig) -> dict[str, torch.Tensor]:
    """Intra, inter and negative terms from sampled vectors; negatives averaged over the draws."""
    intra, intra_s = plain_term(f1, f1, c1, c1, cfg.pos_intra_shift, cfg.pointwise)
    inter, inter_s = plain_term(f1, f2, c1, c2, cfg.pos_inter_shift, cfg.pointwise)
    negs = [plain_term(f1, fn, c1, cn, cfg.neg_inter_shift, cfg.pointwise) for fn, cn in zip(fnegs, cnegs, strict=True)]
    return {
        "intra": intra,
        "inter": inter,
        "neg": sum(n[0] for n in negs) / len(negs),
        "intra_sim": intra_s,
        "inter_sim": inter_s,
        "neg_sim": sum(n[1] for n in negs) / len(negs),
    }


@pytest.mark.parametrize("pointwise", [True, False])
def test_loss_terms_equal_a_plain_recomputation_at_injected_grid_points(pointwise):
    # coordinates on exact grid points, so sampling is plain indexing; image b is read at its first
    # set, its positive and every negative partner at b's second set
    torch.manual_seed(0)
    b, d, k, h, w, s = 3, 6, 4, 5, 7, 4
    feats, feats_pos = torch.randn(b, d, h, w), torch.randn(b, d, h, w)
    code, code_pos = torch.randn(b, k, h, w), torch.randn(b, k, h, w)
    ys1, xs1, ys2, xs2 = (torch.randint(0, n, (b, s, s)) for n in (h, w, h, w))

    def coords(ys, xs):
        return torch.stack([-1 + 2 * xs / (w - 1), -1 + 2 * ys / (h - 1)], dim=-1)

    def at(t, img, ys, xs):  # (B, P, C) vectors of t[img[i]] at positions (ys[i], xs[i])
        return torch.stack([t[img[i]][:, ys[i].reshape(-1), xs[i].reshape(-1)].T for i in range(len(img))])

    partners = [torch.tensor([1, 0, 0]), torch.tensor([2, 0, 1])]  # the first is not a permutation
    cfg = CorrespondenceConfig(pointwise=pointwise, feature_samples=s, neg_samples=2)
    got = correspondence_terms(
        feats, feats_pos, code, code_pos, cfg, coords=(coords(ys1, xs1), coords(ys2, xs2)), partners=partners
    )
    own = torch.arange(b)
    want = plain_terms(
        at(feats, own, ys1, xs1),
        at(feats_pos, own, ys2, xs2),
        [at(feats, p, ys2, xs2) for p in partners],
        at(code, own, ys1, xs1),
        at(code_pos, own, ys2, xs2),
        [at(code, p, ys2, xs2) for p in partners],
        cfg,
    )
    for name, value in want.items():
        assert getattr(got, name).item() == pytest.approx(value.item(), abs=1e-5), name
    # sampling the partners at their own first positions (unseg's old rule) gives another number
    old = plain_terms(
        at(feats, own, ys1, xs1),
        at(feats_pos, own, ys2, xs2),
        [at(feats, p, ys1[p], xs1[p]) for p in partners],
        at(code, own, ys1, xs1),
        at(code_pos, own, ys2, xs2),
        [at(code, p, ys1[p], xs1[p]) for p in partners],
        cfg,
    )
    assert abs(old["neg"].item() - got.neg.item()) > 1e-3
    with pytest.raises(ValueError, match="1 partner draws"):
        correspondence_terms(feats, feats_pos, code, code_pos, cfg, partners=partners[:1])


@pytest.mark.parametrize("correlation_dropout", [True, False])
def test_module_losses_equal_a_plain_recomputation_of_the_authors_draws(correlation_dropout):
    # same seed, then every random draw redone by hand in the authors' order: the head's two
    # dropouts and the correlation dropout (image, then positive), coordinates, negative partners
    torch.manual_seed(0)
    b, d, h, w, p = 4, 12, 6, 6, 0.3
    cfg = config_from_dict(
        StegoConfig,
        {
            "n_classes": 2,
            "dim": 5,
            "dropout": p,
            "correlation_dropout": correlation_dropout,
            "loss": {"feature_samples": 5, "neg_samples": 3},
        },
    )
    module = StegoModule(cfg, d).train()
    batch = {"x": torch.randn(b, d, h, w), "x_pos": torch.randn(b, d, h, w)}
    torch.manual_seed(7)
    got = module.losses(batch)

    torch.manual_seed(7)
    head, s = module.net, cfg.loss.feature_samples

    def drop(t: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(t, p, training=True)

    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = head.cluster1(drop(x)) + head.cluster2(drop(x))
        return (drop(x) if correlation_dropout else x), code

    with torch.no_grad():
        signal, code = encode(batch["x"])
        signal_pos, code_pos = encode(batch["x_pos"])
        coords1, coords2 = (torch.rand(b, s, s, 2) * 2 - 1 for _ in range(2))
        partners = []
        for _ in range(cfg.loss.neg_samples):
            perm = torch.randperm(b)
            partners.append(torch.where(perm == torch.arange(b), perm + 1, perm) % b)

        def at(t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (B, P, C) bilinear samples
            out = F.grid_sample(t, c, mode="bilinear", padding_mode="border", align_corners=True)
            return out.flatten(2).transpose(1, 2)

        want = plain_terms(
            at(signal, coords1),
            at(signal_pos, coords2),
            [at(signal[q], coords2) for q in partners],
            at(code, coords1),
            at(code_pos, coords2),
            [at(code[q], coords2) for q in partners],
            cfg.loss,
        )
    for key, name in (
        ("loss/pos_intra", "intra"),
        ("loss/pos_inter", "inter"),
        ("loss/neg_inter", "neg"),
        ("cd/pos_intra", "intra_sim"),
        ("cd/neg_inter", "neg_sim"),
    ):
        assert got[key].item() == pytest.approx(want[name].item(), abs=1e-5), key
    total = (
        cfg.loss.pos_intra_weight * want["intra"]
        + cfg.loss.pos_inter_weight * want["inter"]
        + cfg.loss.neg_inter_weight * want["neg"]
    )
    assert got["loss/correspondence"].item() == pytest.approx(total.item(), abs=1e-5)
    # in eval mode every dropout is off: F reads the raw features
    module.eval()
    torch.manual_seed(7)
    got_eval = module.losses(batch)
    torch.manual_seed(7)
    with torch.no_grad():
        code, code_pos = head(batch["x"]), head(batch["x_pos"])
        coords1, coords2 = (torch.rand(b, s, s, 2) * 2 - 1 for _ in range(2))
        perms = [torch.randperm(b) for _ in range(cfg.loss.neg_samples)]
        partners = [torch.where(q == torch.arange(b), q + 1, q) % b for q in perms]
        x, xp = batch["x"], batch["x_pos"]
        want = plain_terms(
            at(x, coords1),
            at(xp, coords2),
            [at(x[q], coords2) for q in partners],
            at(code, coords1),
            at(code_pos, coords2),
            [at(code[q], coords2) for q in partners],
            cfg.loss,
        )
    assert got_eval["loss/pos_intra"].item() == pytest.approx(want["intra"].item(), abs=1e-5)
    assert got_eval["loss/neg_inter"].item() == pytest.approx(want["neg"].item(), abs=1e-5)


def test_shipped_stego_configs_use_the_correlation_dropout():
    for name in ("cocostuff27_vitb8", "cityscapes27_vitb8", "potsdam3_vits8", "camvid_effnet"):
        assert load_config(StegoConfig, f"stego/{name}").correlation_dropout is True
    assert StegoConfig().correlation_dropout is True


# --- probes ---------------------------------------------------------------------------------------


def test_cluster_probe_loss_decreases_on_separable_codes():
    torch.manual_seed(0)
    centres = torch.eye(3, 6) * 4
    labels = torch.randint(0, 3, (4, 5, 5))
    codes = centres[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(4, 6, 5, 5)
    probe = ClusterProbe(6, 3)
    optimiser = torch.optim.Adam(probe.parameters(), lr=5e-2)
    losses = []
    for _ in range(60):
        loss = probe.loss(codes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assigned = probe(codes).argmax(1)
    for k in range(3):  # each group of codes is assigned to one centroid (hard assignment may merge groups)
        assert assigned[labels == k].unique().numel() == 1
    logp = probe.log_probs(codes)
    assert torch.allclose(logp.exp().sum(1), torch.ones(4, 5, 5), atol=1e-5)
    assert torch.equal(logp.argmax(1), probe(codes).argmax(1))


# --- training -------------------------------------------------------------------------------------


def test_training_steps_lower_the_loss_on_a_fixed_batch(two_class_cache, stego_config):
    cache, masks, knn = two_class_cache
    torch.manual_seed(0)
    module = StegoModule(stego_config(), cache.dim)
    pairs = CachedPairs(cache, knn, num_neighbors=3, masks=masks)
    batch = torch.utils.data.default_collate([pairs[i] for i in range(4)])
    optimiser = module.configure_optimizers()

    def total() -> torch.Tensor:
        torch.manual_seed(1)  # same sample grid and negative partners every time: a fixed objective
        return module.losses(batch)["loss/total"]

    before = total().item()
    for _ in range(25):
        optimiser.zero_grad()
        total().backward()
        optimiser.step()
    out = module.losses(batch)
    assert total().item() < before - 0.1
    assert {"loss/pos_intra", "loss/pos_inter", "loss/neg_inter", "loss/cluster", "loss/linear"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())


def test_train_stego_writes_checkpoints_logs_config_and_resumes(two_class_cache, tmp_path, stego_config):
    cache, masks, knn = two_class_cache
    cfg = stego_config()
    module = train_stego(cfg, cache, knn, masks=masks, out_dir=tmp_path / "run")
    run = tmp_path / "run"
    assert module.trainer.global_step == 3
    assert load_config(StegoConfig, run / "config.yaml") == cfg
    metrics = next((run / "logs").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "loss/pos_inter" in metrics and "loss/cluster" in metrics
    # the final file and Lightning's own checkpoint are both STEGO's layout
    for path in (run / "stego.ckpt", run / "checkpoints" / "last.ckpt"):
        head, cluster_probe, linear_probe, meta = load_stego(path, n_classes=2, dim=8)
        assert meta["feat_dim"] == 16 and config_from_dict(StegoConfig, meta["config"]) == cfg
    resumed = train_stego(stego_config(max_steps=5), cache, knn, masks=masks, out_dir=run, resume="last")
    assert resumed.trainer.global_step == 5


def test_train_stego_checks_its_inputs(two_class_cache, tmp_path, stego_config):
    cache, masks, knn = two_class_cache
    with pytest.raises(ValueError, match="data_source='images'"):
        train_stego(stego_config(data_source="images"), cache, knn, out_dir=tmp_path)
    with pytest.raises(ValueError, match="neighbours 1..7"):
        train_stego(stego_config(num_neighbors=7), cache, knn, out_dir=tmp_path)
    with pytest.raises(ValueError, match="does not fit 8 images"):
        train_stego(stego_config(), cache, knn[:5], out_dir=tmp_path)


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "none"])
def test_the_logger_key_selects_what_the_run_logs(two_class_cache, tmp_path, stego_config, logger):
    """csv: a metrics.csv row per step; tensorboard: event files, or without the package a one-line error before
    anything is written; none: no logs folder. The checkpoints are written either way."""
    import csv
    from importlib.util import find_spec

    from unseg.errors import MissingExtraError

    cache, masks, knn = two_class_cache
    out = tmp_path / "run"
    if logger == "tensorboard" and not (find_spec("tensorboard") or find_spec("tensorboardX")):
        with pytest.raises(MissingExtraError, match=r"^logger=tensorboard needs .*pip install tensorboard [^\n]*$"):
            train_stego(stego_config(logger=logger), cache, knn, masks=masks, out_dir=out)
        assert not out.exists()
        return
    train_stego(stego_config(logger=logger), cache, knn, masks=masks, out_dir=out)
    assert load_stego(out / "checkpoints" / "last.ckpt")[3]["config"]["logger"] == logger
    if logger == "csv":
        with open(out / "logs" / "version_0" / "metrics.csv") as fh:
            assert [int(r["step"]) for r in csv.DictReader(fh) if r.get("loss/total")] == [0, 1, 2]
    elif logger == "tensorboard":
        assert list((out / "logs" / "version_0").glob("events.out.tfevents.*"))
    else:
        assert not (out / "logs").exists()


def test_training_is_deterministic_given_the_seed(two_class_cache, tmp_path, stego_config):
    cache, masks, knn = two_class_cache
    runs = [train_stego(stego_config(seed=7), cache, knn, masks=masks, out_dir=tmp_path / str(i)) for i in range(2)]
    other = train_stego(stego_config(seed=8), cache, knn, masks=masks, out_dir=tmp_path / "other")
    weights = [m.net.cluster1[0].weight for m in (*runs, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_image_pairs_center_crop_images_and_masks(tmp_path, image_folder):
    from PIL import Image

    from unseg.datasets import create_dataset

    image_folder(tmp_path / "images", 4, size=(40, 30))
    (tmp_path / "masks").mkdir()
    for i in range(4):
        mask = np.zeros((30, 40), np.uint8)
        mask[:, 20:] = 1
        Image.fromarray(mask).save(tmp_path / "masks" / f"img{i:02d}.png")
    dataset = create_dataset("folder", tmp_path / "images", "", masks=tmp_path / "masks", num_classes=2)
    knn = np.array([[i, (i + 1) % 4] for i in range(4)])
    item = ImagePairs(dataset, knn, 16, (0.5,) * 3, (0.25,) * 3, num_neighbors=1)[0]
    assert item["x"].shape == item["x_pos"].shape == (3, 16, 16)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (16, 16)
    assert (item["label"][:, :8] == 0).all() and (item["label"][:, 8:] == 1).all()  # the crop is centred


def test_images_path_runs_the_frozen_backbone_inside_the_module(stego_config, tiny_vit):
    backbone = tiny_vit()
    module = StegoModule(stego_config(), backbone.embed_dim, backbone).train()
    assert not backbone.training  # frozen backbone stays in eval mode
    batch = {"x": torch.randn(2, 3, 32, 32), "x_pos": torch.randn(2, 3, 32, 32)}
    out = module.losses(batch)
    out["loss/total"].backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert module.net.cluster1[0].weight.grad.abs().sum() > 0
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert "net.model.cls_token" in checkpoint["state_dict"] and not any(
        k.startswith("backbone.") for k in checkpoint["state_dict"]
    )
    module.on_load_checkpoint(checkpoint)  # back to the module's own names, for resuming
    assert checkpoint["state_dict"].keys() == module.state_dict().keys()
    codes = stego_codes(module.net.eval(), batch["x"], backbone=backbone)
    assert codes.shape == (2, 8, 2, 2)


# --- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_round_trip_in_stego_layout(tmp_path, stego_config):
    torch.manual_seed(0)
    head, cluster_probe, linear_probe = StegoHead(12, 5).eval(), ClusterProbe(5, 4), LinearProbe(5, 3)
    path = tmp_path / "model.ckpt"
    save_stego(path, head, cluster_probe, linear_probe, stego_config(n_classes=3, dim=5, extra_clusters=1))
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["state_dict"]) == {
        "net.cluster1.0.weight",
        "net.cluster1.0.bias",
        "net.cluster2.0.weight",
        "net.cluster2.0.bias",
        "net.cluster2.2.weight",
        "net.cluster2.2.bias",
        "cluster_probe.clusters",
        "linear_probe.weight",
        "linear_probe.bias",
    }
    assert ckpt["hyper_parameters"]["n_classes"] == 3 and ckpt["hyper_parameters"]["dim"] == 5
    head2, cluster2, linear2, meta = load_stego(path)
    assert meta["extra_clusters"] == 1 and not meta["has_backbone"]
    x = torch.randn(2, 12, 4, 4)
    code = head(x)
    assert torch.allclose(head2(x), code)
    assert torch.allclose(cluster2.log_probs(code), cluster_probe.log_probs(code))
    assert torch.allclose(linear2(code), linear_probe(code))


def released_checkpoint(path: Path, n_classes: int = 27, dim: int = 9, feat: int = 24) -> dict:
    """A checkpoint with the key names and hyper-parameters of the authors' released files (small sizes)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    state = {
        "net.model.cls_token": t(1, 1, feat),
        "net.model.pos_embed": t(1, 5, feat),
        "net.model.patch_embed.proj.weight": t(feat, 3, 8, 8),
        "net.model.blocks.0.norm1.weight": t(feat),
        "net.model.norm.weight": t(feat),
        "net.model.norm.bias": t(feat),
        "net.cluster1.0.weight": t(dim, feat, 1, 1),
        "net.cluster1.0.bias": t(dim),
        "net.cluster2.0.weight": t(feat, feat, 1, 1),
        "net.cluster2.0.bias": t(feat),
        "net.cluster2.2.weight": t(dim, feat, 1, 1),
        "net.cluster2.2.bias": t(dim),
        "train_cluster_probe.clusters": t(n_classes, dim),
        "cluster_probe.clusters": t(n_classes, dim),
        "linear_probe.weight": t(n_classes, dim, 1, 1),
        "linear_probe.bias": t(n_classes),
        "decoder.weight": t(feat, dim, 1, 1),
        "decoder.bias": t(feat),
    }
    cfg = {
        "dim": dim,
        "continuous": True,
        "extra_clusters": 0,
        "dropout": True,
        "pointwise": True,
        "model_type": "vit_base",
        "dino_patch_size": 8,
        "neg_inter_weight": 0.1538476246415498,
    }
    ckpt = {
        "epoch": 3,
        "global_step": 7000,
        "pytorch-lightning_version": "1.4.9",
        "state_dict": state,
        "hyper_parameters": {"n_classes": n_classes, "cfg": cfg},
    }
    torch.save(ckpt, path)
    return state


def test_released_layout_checkpoint_loads(tmp_path):
    path = tmp_path / "cocostuff27_vit_base_5.ckpt"
    state = released_checkpoint(path)
    head, cluster_probe, linear_probe, meta = load_stego(path, n_classes=27, dim=9)
    assert meta["has_backbone"] and meta["feat_dim"] == 24 and meta["config"]["model_type"] == "vit_base"
    x = torch.randn(1, 24, 3, 3)

    def conv(name: str, v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, state[f"{name}.weight"], state[f"{name}.bias"])

    expected = conv("net.cluster1.0", x) + conv("net.cluster2.2", torch.relu(conv("net.cluster2.0", x)))
    assert torch.allclose(head(x), expected, atol=1e-5)
    assert torch.allclose(linear_probe(expected), conv("linear_probe", expected), atol=1e-5)
    assert torch.equal(cluster_probe.clusters, state["cluster_probe.clusters"])


def test_wrong_classes_or_dim_or_layout_is_a_weights_error(tmp_path):
    path = tmp_path / "released.ckpt"
    state = released_checkpoint(path)
    with pytest.raises(WeightsError, match=r"n_classes=27, dim=9; requested n_classes=11"):
        load_stego(path, n_classes=11)
    with pytest.raises(WeightsError, match=r"dim=9; requested dim=70"):
        load_stego(path, dim=70)
    torch.save({"state_dict": state, "hyper_parameters": {"n_classes": 21, "cfg": {"dim": 9}}}, path)
    with pytest.raises(WeightsError, match="hyper-parameters say n_classes=21"):
        load_stego(path)
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("linear_probe")}}, path)
    with pytest.raises(WeightsError, match="lacks 'linear_probe.weight'"):
        load_stego(path)


# --- evaluation -----------------------------------------------------------------------------------


def test_evaluate_stego_scores_perfect_probes_and_calls_refine(tmp_path, feature_cache):
    # features = one-hot class vectors on a 4x4 grid; head = identity on its linear branch
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (5, 4, 4))
    feats = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    cache = feature_cache(tmp_path / "cache", feats)
    masks = labels.repeat(2, 1).repeat(2, 2).astype(np.uint8)  # (5, 8, 8)
    masks[0, 0, 0] = 255
    head = StegoHead(3, 3)
    with torch.no_grad():
        head.cluster1[0].weight.copy_(torch.eye(3)[:, :, None, None])
        head.cluster1[0].bias.zero_()
        head.cluster2[2].weight.zero_()
        head.cluster2[2].bias.zero_()
        cluster_probe, linear_probe = ClusterProbe(3, 3), LinearProbe(3, 3)
        cluster_probe.clusters.copy_(torch.eye(3)[[2, 0, 1]])  # cluster k is class [2, 0, 1][k]
        linear_probe.weight.copy_(torch.eye(3)[:, :, None, None])
        linear_probe.bias.zero_()
    seen = []

    def refine(indices: list[int], scores: torch.Tensor) -> torch.Tensor:
        seen.extend((i, tuple(s.shape)) for i, s in zip(indices, scores, strict=True))
        return scores

    result = evaluate_stego(
        head, cluster_probe, linear_probe, cache, masks, 3, refine=refine, batch_size=2, device="cpu"
    )
    assert result.mapping.tolist() == [2, 0, 1]
    for scores in (result.cluster, result.linear):
        assert scores.miou == pytest.approx(100.0) and scores.pixel_accuracy == pytest.approx(100.0)
    assert sorted(seen) == sorted([(i, (3, 8, 8)) for i in range(5)] * 2)
    assert "cluster probe" in result.summary() and "hungarian-pixels" in result.summary()
    assert (result.to_dict()["matching"], result.to_dict()["absent_classes"]) == ("hungarian-pixels", "skip")
    other = evaluate_stego(
        head,
        cluster_probe,
        linear_probe,
        cache,
        masks,
        3,
        batch_size=2,
        device="cpu",
        matching="hungarian-iou",
        absent="zero",
    )
    assert (other.matching, other.absent) == ("hungarian-iou", "zero") and other.mapping.tolist() == [2, 0, 1]
    with pytest.raises(UnsegError, match="matching rule 'best'"):
        evaluate_stego(head, cluster_probe, linear_probe, cache, masks, 3, device="cpu", matching="best")


def test_matching_options_on_the_command_line(tmp_path):
    from unseg.cli import build_parser
    from unseg.options import given

    parser = build_parser()
    (tmp_path / "c.yaml").write_text("dim: 8\n")
    (tmp_path / "s.ckpt").write_bytes(b"")  # files the options name must exist; nothing reads them here
    stego = ["eval", "stego", "--config", str(tmp_path / "c.yaml"), "--checkpoint", str(tmp_path / "s.ckpt")]
    cluster = ["eval", "cluster", "--root", str(tmp_path)]
    for base in (stego, cluster):
        assert given(parser.parse_args(base), "matching", "absent") == {}  # the protocol's own default applies
        args = parser.parse_args([*base, "--matching", "hungarian-iou", "--absent-classes", "zero"])
        assert given(args, "matching", "absent") == {"matching": "hungarian-iou", "absent": "zero"}
        with pytest.raises(UsageError, match="--matching"):
            parser.parse_args([*base, "--matching", "hungarian"])


# --- configs --------------------------------------------------------------------------------------


def test_shipped_configs_load_with_the_released_numbers():
    cocostuff = load_config(StegoConfig, "stego/cocostuff27_vitb8")
    assert (cocostuff.dim, cocostuff.loss.neg_inter_shift, cocostuff.loss.pointwise) == (90, 1.0, True)
    assert cocostuff.lr_head == 5e-4 and cocostuff.lr_probes == 5e-3
    cityscapes = load_config(StegoConfig, "stego/cityscapes27_vitb8")
    assert (cityscapes.dim, cityscapes.loss.pointwise) == (100, False)
    potsdam = load_config(StegoConfig, "stego/potsdam3_vits8")
    assert (potsdam.n_classes, potsdam.dim, potsdam.max_steps, potsdam.batch_size) == (3, 70, 5000, 16)
    assert (potsdam.loss.neg_inter_shift, potsdam.loss.pos_inter_shift, potsdam.loss.pos_intra_shift) == (
        0.46,
        0.02,
        0.08,
    )
    camvid = load_config(StegoConfig, "stego/camvid_effnet")
    assert (camvid.backbone, camvid.n_classes) == ("efficientnet_lite0", 11)


def test_config_overrides_and_partial_groups(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dim: 90\nlr_head: 1e-4\nloss:\n  pointwise: false\n")
    cfg = load_config(StegoConfig, path, ["loss.neg_inter_shift=0.5", "weights=null", "batch_size=8"])
    assert (cfg.dim, cfg.lr_head, cfg.batch_size, cfg.weights) == (90, 1e-4, 8, None)
    assert (cfg.loss.pointwise, cfg.loss.neg_inter_shift) == (False, 0.5)
    assert cfg.loss.feature_samples == 11  # keys the group does not name keep their defaults
    assert load_config(StegoConfig, None, []) == StegoConfig()
    assert dump_config(cfg)["loss"]["neg_inter_shift"] == 0.5


@pytest.mark.parametrize(
    "text, overrides, pattern",
    [
        ("dimm: 90\n", [], r"config file .*run\.yaml: unknown key 'dimm'"),
        ("loss:\n  neg_weight: 1\n", [], r"unknown key 'loss\.neg_weight'"),
        ("", ["loss.shift=0.1"], r"override 'loss\.shift=0\.1': unknown key 'loss\.shift'"),
        ("dim: seventy\n", [], r"config file .*: key 'dim' expects int, got 'seventy'"),
        ("", ["loss.pointwise=3"], r"key 'loss\.pointwise' expects bool"),
        ("", ["data_source=disk"], r"key 'data_source' expects one of 'cache', 'images'"),
        ("", ["lr_head=fast"], r"key 'lr_head' expects float"),
        ("loss: 3\n", [], r"key 'loss' expects a mapping"),
        ("", ["no_equals_sign"], r"not of the form key=value"),
    ],
)
def test_config_errors_name_the_key_and_source(tmp_path, text, overrides, pattern):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(StegoConfig, path, overrides)
