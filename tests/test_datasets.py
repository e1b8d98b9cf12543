"""Every registered dataset on a tiny fixture in its real folder layout.

Each fixture stores label maps with chosen raw values; the tests check the exact class ids
they decode to (ignore mapping included), the ids, sizes and the error for each kind of
broken input.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from unseg.datasets import DATASETS, IGNORE_INDEX, create_dataset, list_datasets
from unseg.datasets.imagenet100 import IMAGENET100_WNIDS
from unseg.errors import ImageError, LayoutError, RegistryError

W, H = 8, 6
CAMVID = Path("/work/shared/data/camvid")


def tile(values: list[int], shift: int) -> np.ndarray:
    """An HxW map cycling through ``values``, shifted per sample so samples differ."""
    return np.array(values)[(np.arange(W * H) + shift) % len(values)].reshape(H, W)


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")


def write_grey(path: Path, raw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(raw.astype(np.uint8), "L").save(path)


def write_palette(path: Path, raw: np.ndarray) -> None:
    """A VOC-style palette PNG: the stored values are palette indices, the colours arbitrary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(raw.astype(np.uint8), "P")
    image.putpalette([(i * 37 + c * 91) % 256 for i in range(256) for c in range(3)])
    image.save(path)


def write_ade_parts(path: Path, raw: np.ndarray) -> None:
    """ADE20K's encoding: R = class // 256 * 10, G = class % 256, B = instance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([raw // 256 * 10, raw % 256, np.full_like(raw, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)


def write_potsdam_gt(path: Path, raw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"gt": raw.astype(np.int32)})


def potsdam_pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 4), dtype=np.uint8)


def write_potsdam_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"img": potsdam_pixels(seed)})


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


@dataclass
class Case:
    """A fixture: what to build, what it must decode to, and a path its layout cannot lack."""

    name: str
    root: Path
    split: str
    ids: list[str]
    images: list[Path]
    masks: list[Path] | None
    raw: list[int]
    expected: list[int]
    write_mask: Callable[[Path, np.ndarray], None] | None
    required: Path
    kwargs: dict[str, Any] = field(default_factory=dict)

    def open(self):
        return create_dataset(self.name, self.root, self.split, **self.kwargs)


def labelled(
    name: str,
    root: Path,
    split: str,
    ids: list[str],
    images: list[Path],
    masks: list[Path],
    raw: list[int],
    expected: list[int],
    write_mask: Callable[[Path, np.ndarray], None],
    required: Path,
    kwargs: dict[str, Any] | None = None,
) -> Case:
    """Write one image and one label map (raw values shifted by the sample index) per id."""
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        write_image(image, i)
        write_mask(mask, tile(raw, i))
    return Case(name, root, split, ids, images, masks, raw, expected, write_mask, required, kwargs or {})


def build_camvid(tmp: Path) -> Case:
    ids = ["0016E5_07959", "0016E5_07961", "Seq05VD_f00000"]
    write_lines(tmp / "val.txt", ids)
    return labelled(
        "camvid",
        tmp,
        "val",
        ids,
        [tmp / "val" / f"{i}.png" for i in ids],
        [tmp / "valannot" / f"{i}.png" for i in ids],
        [0, 5, 10, 11, 12],
        [0, 5, 10, 255, 255],
        write_grey,
        tmp / "valannot",
    )


def build_folder(tmp: Path) -> Case:
    root, masks = tmp / "images", tmp / "masks"
    ids = ["a", "b", "c"]
    return labelled(
        "folder",
        root,
        "",
        ids,
        [root / f"{i}.png" for i in ids],
        [masks / f"{i}.png" for i in ids],
        [0, 1, 2, 3, 255],
        [0, 1, 2, 255, 255],
        write_grey,
        masks / "b.png",
        {"masks": masks, "num_classes": 3},
    )


def build_voc_leopart_val(tmp: Path) -> Case:
    base = tmp / "VOCSegmentation"  # Leopart's VOCDataModule appends this to its data_dir
    ids = ["2007_000033", "2007_000042", "2011_003271"]
    write_lines(base / "sets" / "val.txt", ids)
    return labelled(
        "voc12",
        tmp,
        "val",
        ids,
        [base / "images" / f"{i}.jpg" for i in ids],
        [base / "SegmentationClass" / f"{i}.png" for i in ids],
        [0, 1, 15, 20, 255, 21, 200],
        [0, 1, 15, 20, 255, 255, 255],
        write_palette,
        base / "sets" / "val.txt",
    )


def build_voc_leopart_train(tmp: Path) -> Case:
    """Leopart reads train masks from SegmentationClassAug; SegmentationClass is absent here."""
    ids = ["2007_000032", "2007_000039"]
    write_lines(tmp / "sets" / "train.txt", ids)
    return labelled(
        "voc12",
        tmp,
        "train",
        ids,
        [tmp / "images" / f"{i}.jpg" for i in ids],
        [tmp / "SegmentationClassAug" / f"{i}.png" for i in ids],
        [0, 7, 255, 30],
        [0, 7, 255, 255],
        write_grey,
        tmp / "SegmentationClassAug",
    )


def build_voc_devkit_val(tmp: Path) -> Case:
    base = tmp / "VOCdevkit" / "VOC2012"
    ids = ["2007_000033", "2007_000042"]
    write_lines(base / "ImageSets" / "Segmentation" / "val.txt", ids)
    return labelled(
        "voc12",
        tmp,
        "val",
        ids,
        [base / "JPEGImages" / f"{i}.jpg" for i in ids],
        [base / "SegmentationClass" / f"{i}.png" for i in ids],
        [0, 3, 20, 255, 22],
        [0, 3, 20, 255, 255],
        write_palette,
        base / "JPEGImages",
    )


def build_voc_devkit_trainaug(tmp: Path) -> Case:
    base = tmp / "VOC2012"
    ids = ["2007_000032", "2008_000002", "2011_000003"]
    write_lines(base / "ImageSets" / "Segmentation" / "trainaug.txt", ids)
    return labelled(
        "voc12",
        tmp,
        "trainaug",
        ids,
        [base / "JPEGImages" / f"{i}.jpg" for i in ids],
        [base / "SegmentationClassAug" / f"{i}.png" for i in ids],
        [0, 12, 255, 99],
        [0, 12, 255, 255],
        write_grey,
        base / "SegmentationClassAug",
    )


def build_cocostuff27(tmp: Path) -> Case:
    ids = ["000000000139", "000000000285", "000000000632"]
    write_lines(tmp / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt", ids)
    # fine ids: 0 person, 2 car, 17 dog, 91 banner, 148 road, 181 wood; 255 unlabelled
    return labelled(
        "cocostuff27",
        tmp,
        "val",
        ids,
        [tmp / "images" / "val2017" / f"{i}.jpg" for i in ids],
        [tmp / "annotations" / "val2017" / f"{i}.png" for i in ids],
        [0, 2, 17, 91, 148, 181, 255, 200],
        [9, 11, 7, 17, 21, 24, 255, 255],
        write_grey,
        tmp / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt",
    )


def build_cocostuff15(tmp: Path) -> Case:
    ids = ["000000000139", "000000000285"]
    masks = tmp / "annotations" / "annotations" / "stuff_annotations" / "stuff_val2017_pixelmaps"
    # COCO ids: 92 banner (textile), 97 bush (plant), 102 ceiling-other, 121 food-other,
    # 149 road (ground), 182 wood (solid); 183 other (things), 0 unlabelled
    return labelled(
        "cocostuff15",
        tmp,
        "val",
        ids,
        [tmp / "coco" / "images" / "val2017" / f"{i}.jpg" for i in ids],
        [masks / f"{i}.png" for i in ids],
        [92, 97, 102, 121, 149, 182, 183, 0],
        [11, 6, 1, 3, 5, 9, 255, 255],
        write_grey,
        masks,
    )


def build_cocothing12(tmp: Path) -> Case:
    ids = ["000000000139", "000000000285", "000000000632"]
    masks = tmp / "annotations" / "panoptic_annotations" / "semantic_segmentation_val2017"
    # COCO ids: 1 person, 3 car (vehicle), 18 dog (animal), 62 chair (furniture), 90 toothbrush
    # (indoor); 0 unlabelled, 149 and 200 stuff
    return labelled(
        "cocothing12",
        tmp,
        "val",
        ids,
        [tmp / "coco" / "images" / "val2017" / f"{i}.jpg" for i in ids],
        [masks / f"{i}.png" for i in ids],
        [1, 3, 18, 62, 90, 0, 149, 200],
        [9, 11, 1, 5, 6, 255, 255, 255],
        write_grey,
        tmp / "coco" / "images" / "val2017",
    )


def build_cityscapes27(tmp: Path) -> Case:
    frames = [
        ("frankfurt", "frankfurt_000000_000294"),
        ("frankfurt", "frankfurt_000000_000576"),
        ("lindau", "lindau_000000_000019"),
    ]
    return labelled(
        "cityscapes27",
        tmp,
        "val",
        [stem for _, stem in frames],
        [tmp / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png" for city, stem in frames],
        [tmp / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png" for city, stem in frames],
        [0, 6, 7, 8, 26, 33, 34],
        [255, 255, 0, 1, 19, 26, 255],
        write_grey,
        tmp / "gtFine" / "val",
    )


def build_potsdam3(tmp: Path) -> Case:
    ids = ["17", "4242", "903"]
    write_lines(tmp / "labelled_train.txt", ids)
    images = [tmp / "imgs" / f"{i}.mat" for i in ids]
    masks = [tmp / "gt" / f"{i}.mat" for i in ids]
    raw = [0, 1, 2, 3, 4, 5, 255]
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        write_potsdam_image(image, i)
        write_potsdam_gt(mask, tile(raw, i))
    return Case(
        "potsdam3",
        tmp,
        "train",
        ids,
        images,
        masks,
        raw,
        [0, 1, 2, 2, 0, 1, 255],
        write_potsdam_gt,
        tmp / "labelled_train.txt",
    )


ADE_FOLDER = "ADE20K_2021_17_01/images/ADE/training/urban/street"


def build_ade20k_parts(tmp: Path) -> Case:
    files = ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg", "ADE_train_00000003.jpg", "ADE_train_00000004.jpg"]
    scenes = ["/street", "/street", "/bedroom", "/street"]
    is_part = np.zeros((3200, len(files)), dtype=np.uint8)
    is_part[50, [0, 2]] = 1
    is_part[3000, 3] = 2  # image 1 is a street scene without parts, image 2 is no street
    index = {
        "filename": files,
        "folder": [ADE_FOLDER] * len(files),
        "scene": scenes,
        "objectIsPart": is_part,
        "objectnames": [f"object {k}" for k in range(3200)],
    }
    index_path = tmp / "ADE20K_2021_17_01" / "index_ade20k.pkl"
    index_path.parent.mkdir(parents=True)
    index_path.write_bytes(pickle.dumps(index))
    kept = [files[0], files[3]]
    folder = tmp / ADE_FOLDER
    return labelled(
        "ade20k_parts",
        tmp,
        "val",
        [f[:-4] for f in kept],
        [folder / f for f in kept],
        [folder / f.replace(".jpg", "_parts_1.png") for f in kept],
        [50, 51, 3154, 1063, 0, 49, 1000],
        [0, 1, 110, 39, 255, 255, 255],
        write_ade_parts,
        index_path,
    )


def build_imagenet100(tmp: Path) -> Case:
    for wnid in IMAGENET100_WNIDS:
        (tmp / "train" / wnid).mkdir(parents=True)
    (tmp / "train" / "n99999999").mkdir()  # a class outside ImageNet-100: never listed
    write_image(tmp / "train" / "n99999999" / "n99999999_1.JPEG", 9)
    first, second = IMAGENET100_WNIDS[:2]
    images = [
        tmp / "train" / first / f"{first}_10.JPEG",
        tmp / "train" / first / f"{first}_7.JPEG",
        tmp / "train" / second / f"{second}_3.JPEG",
    ]
    for i, image in enumerate(images):
        write_image(image, i)
    return Case(
        "imagenet100",
        tmp,
        "train",
        [f"{p.parent.name}/{p.stem}" for p in images],
        images,
        None,
        [],
        [],
        None,
        tmp / "train",
    )


BUILDERS: dict[str, Callable[[Path], Case]] = {
    "camvid": build_camvid,
    "folder": build_folder,
    "voc12-leopart-val": build_voc_leopart_val,
    "voc12-leopart-train": build_voc_leopart_train,
    "voc12-devkit-val": build_voc_devkit_val,
    "voc12-devkit-trainaug": build_voc_devkit_trainaug,
    "cocostuff27": build_cocostuff27,
    "cocostuff15": build_cocostuff15,
    "cocothing12": build_cocothing12,
    "cityscapes27": build_cityscapes27,
    "potsdam3": build_potsdam3,
    "ade20k_parts": build_ade20k_parts,
    "imagenet100": build_imagenet100,
}
LABELLED = [key for key in BUILDERS if key != "imagenet100"]


def test_every_registered_dataset_has_a_fixture() -> None:
    assert {key.split("-")[0] for key in BUILDERS} == set(list_datasets())


@pytest.mark.parametrize("key", BUILDERS)
def test_decodes_exact_class_ids(key: str, tmp_path: Path) -> None:
    case = BUILDERS[key](tmp_path)
    dataset = case.open()
    assert len(dataset) == len(case.ids)
    assert [s.id for s in dataset.samples] == case.ids
    assert dataset.has_masks == (case.masks is not None)
    for i, sample_id in enumerate(case.ids):
        item = dataset[i]
        assert item["id"] == sample_id
        assert item["image"].mode == "RGB" and item["image"].size == (W, H)
        if case.masks is None:
            assert item["mask"] is None
        else:
            assert item["mask"].dtype == np.uint8
            np.testing.assert_array_equal(item["mask"], tile(case.expected, i))


@pytest.mark.parametrize("key", BUILDERS)
def test_missing_layout_path_is_named(key: str, tmp_path: Path) -> None:
    case = BUILDERS[key](tmp_path)
    if case.required.is_dir():
        shutil.rmtree(case.required)
    else:
        case.required.unlink()
    with pytest.raises(LayoutError) as error:
        case.open()
    assert str(case.required) in str(error.value)


@pytest.mark.parametrize("key", LABELLED)
def test_mask_of_wrong_size_is_named(key: str, tmp_path: Path) -> None:
    case = BUILDERS[key](tmp_path)
    assert case.masks is not None and case.write_mask is not None
    case.write_mask(case.masks[0], tile(case.raw, 0)[: H - 2, : W - 3])
    with pytest.raises(ImageError) as error:
        case.open()[0]
    assert str(case.masks[0]) in str(error.value)


@pytest.mark.parametrize("key", BUILDERS)
def test_corrupt_image_is_named(key: str, tmp_path: Path) -> None:
    case = BUILDERS[key](tmp_path)
    case.images[0].write_bytes(np.random.default_rng(0).bytes(200))
    dataset = case.open()
    with pytest.raises(ImageError) as error:
        dataset[0]
    assert str(case.images[0]) in str(error.value)
    assert dataset[len(dataset) - 1]["image"].size == (W, H)  # the others still load


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as error:
        create_dataset("voc2077", tmp_path, "val")
    for name in list_datasets():
        assert name in str(error.value)


@pytest.mark.parametrize("name", [n for n in list_datasets() if DATASETS.get(n).splits])
def test_unknown_split_lists_known_splits(name: str, tmp_path: Path) -> None:
    with pytest.raises(LayoutError) as error:
        create_dataset(name, tmp_path, "no_such_split")
    assert "no_such_split" in str(error.value)
    assert DATASETS.get(name).splits[0] in str(error.value)


def test_voc_root_fitting_neither_layout_describes_both(tmp_path: Path) -> None:
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(LayoutError) as error:
        create_dataset("voc12", tmp_path, "val")
    message = str(error.value)
    assert str(tmp_path / "sets") in message and str(tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation") in message
    assert "SegmentationClassAug" in message and "VOCdevkit" in message


def test_voc_devkit_accepts_train_aug_list_name(tmp_path: Path) -> None:
    case = build_voc_devkit_trainaug(tmp_path)
    lists = tmp_path / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "trainaug.txt").rename(lists / "train_aug.txt")
    assert [s.id for s in case.open().samples] == case.ids


def test_voc_leopart_train_masks_are_segmentation_class_aug(tmp_path: Path) -> None:
    """Leopart's val masks are SegmentationClass, its train masks SegmentationClassAug."""
    build_voc_leopart_val(tmp_path)
    base = tmp_path / "VOCSegmentation"
    write_lines(base / "sets" / "train.txt", ["2007_000033"])
    (base / "SegmentationClassAug").mkdir()
    train = create_dataset("voc12", tmp_path, "train")
    assert train.samples[0].mask == base / "SegmentationClassAug" / "2007_000033.png"


def test_potsdam_image_is_the_rgb_channels(tmp_path: Path) -> None:
    case = build_potsdam3(tmp_path)
    image = case.open()[1]["image"]
    np.testing.assert_array_equal(np.array(image), potsdam_pixels(1)[:, :, :3])


def test_potsdam_unlabelled_split_has_no_masks(tmp_path: Path) -> None:
    build_potsdam3(tmp_path)
    shutil.rmtree(tmp_path / "gt")
    write_lines(tmp_path / "unlabelled_train.txt", ["17"])
    dataset = create_dataset("potsdam3", tmp_path, "unlabelled_train")
    assert not dataset.has_masks and dataset[0]["mask"] is None


def test_potsdam_train_plus_val_joins_both_lists(tmp_path: Path) -> None:
    case = build_potsdam3(tmp_path)
    write_lines(tmp_path / "labelled_test.txt", ["17"])
    assert [s.id for s in create_dataset("potsdam3", tmp_path, "train+val").samples] == case.ids + ["17"]


def test_ade20k_class_names_come_from_the_index(tmp_path: Path) -> None:
    dataset = build_ade20k_parts(tmp_path).open()
    assert dataset.num_classes == 111
    assert dataset.class_names[0] == "object 49" and dataset.class_names[-1] == "object 3153"


def test_ade20k_corrupt_index_is_a_layout_error(tmp_path: Path) -> None:
    case = build_ade20k_parts(tmp_path)
    case.required.write_bytes(b"not a pickle")
    with pytest.raises(LayoutError) as error:
        case.open()
    assert str(case.required) in str(error.value)


def test_imagenet100_names_missing_class_folders(tmp_path: Path) -> None:
    build_imagenet100(tmp_path)
    gone = IMAGENET100_WNIDS[5], IMAGENET100_WNIDS[99]
    for wnid in gone:
        (tmp_path / "train" / wnid).rmdir()
    with pytest.raises(LayoutError) as error:
        create_dataset("imagenet100", tmp_path, "train")
    assert all(wnid in str(error.value) for wnid in gone) and str(tmp_path / "train") in str(error.value)
    assert "2 ImageNet-100 class folders" in str(error.value)


def test_imagenet100_list_file_in_root_overrides_builtin(tmp_path: Path) -> None:
    first = IMAGENET100_WNIDS[0]
    write_image(tmp_path / "train" / first / "x.JPEG", 0)
    write_lines(tmp_path / "imagenet100.txt", [first])
    assert [s.id for s in create_dataset("imagenet100", tmp_path, "train").samples] == [f"{first}/x"]


def test_builtin_imagenet100_list_has_100_distinct_wnids() -> None:
    assert len(set(IMAGENET100_WNIDS)) == 100 and all(w.startswith("n") and len(w) == 9 for w in IMAGENET100_WNIDS)


def test_coco_coarse_tables_cover_every_fine_id() -> None:
    """27 = 12 thing + 15 stuff classes, and each variant's table reaches all of its classes."""
    from unseg.datasets.coco import CocoStuff15, CocoStuff27, CocoThing12

    for cls in (CocoStuff27, CocoStuff15, CocoThing12):
        used = set(cls.table.tolist()) - {IGNORE_INDEX}
        assert used == set(range(len(cls.class_names))), cls.name
    assert len(CocoStuff27.table) == 182 and len(CocoThing12.table) == 92 and len(CocoStuff15.table) == 183


@pytest.mark.skipif(not CAMVID.is_dir(), reason="real CamVid not present")
def test_real_camvid_val() -> None:
    dataset = create_dataset("camvid", CAMVID, "val")
    assert len(dataset) == 101 and dataset.num_classes == 11
    values: set[int] = set()
    for i in range(len(dataset)):
        mask = dataset[i]["mask"]
        assert mask.shape == (360, 480)
        values.update(np.unique(mask).tolist())
    assert values <= set(range(11)) | {IGNORE_INDEX}
