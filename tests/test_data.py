"""Dataset readers and the synthetic defect generator."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from clipsam.data import (
    DatasetError,
    Sample,
    group_by_category,
    load_mask,
    make_synthetic_dataset,
    open_dataset,
    read_folder,
    read_meta_json,
    read_mvtec,
    read_visa,
    render_synthetic_image,
)
from clipsam.data.synthetic import AREA_RANGE, DEFECT_TYPES, DISCOLORATION_THRESHOLD
from clipsam.images import load_image

CATEGORIES = ("widget", "gasket")
SIZE = (96, 112)  # not square, so a swapped (H, W) shows up


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    out = make_synthetic_dataset(
        root, categories=CATEGORIES, n_good=4, n_defect=9, seed=3, size=SIZE, n_train_good=3
    )
    assert out == root
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(height: int = 20, width: int = 30, value: int = 100) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_dataset_has_mvtec_counts(synthetic_root: Path) -> None:
    test = read_mvtec(synthetic_root, "test")
    train = read_mvtec(synthetic_root, "train")
    groups = group_by_category(test)
    assert list(groups) == sorted(CATEGORIES)
    for category, samples in groups.items():
        kinds = [s.defect_type for s in samples]
        assert kinds.count("good") == 4
        # 9 defect images round-robin over 4 types: 3, 2, 2, 2.
        assert [kinds.count(k) for k in DEFECT_TYPES] == [3, 2, 2, 2], category
        assert {s.label for s in samples if s.defect_type == "good"} == {0}
        assert {s.label for s in samples if s.defect_type != "good"} == {1}
    assert len(train) == 3 * len(CATEGORIES)
    assert {(s.label, s.defect_type, s.mask_path) for s in train} == {(0, "good", None)}
    assert test == sorted(test, key=lambda s: (s.category, str(s.image_path)))


def test_synthetic_masks_match_images_and_area(synthetic_root: Path) -> None:
    height, width = SIZE
    low, high = AREA_RANGE
    for sample in read_mvtec(synthetic_root, "test"):
        image = load_image(sample.image_path)
        assert image.shape == (height, width, 3)
        mask = load_mask(sample, image.shape[:2])
        if sample.label == 0:
            assert sample.mask_path is None
            assert not mask.any()
            continue
        assert sample.mask_path is not None
        assert sample.mask_path.name == f"{sample.image_path.stem}_mask.png"
        with Image.open(sample.mask_path) as raw:
            assert raw.mode == "L"
            assert raw.size == (width, height)
            assert set(np.unique(np.asarray(raw)).tolist()) <= {0, 255}
        assert low <= mask.mean() <= high, (sample.image_path, mask.mean())


def test_synthetic_dataset_is_deterministic_per_seed(tmp_path: Path) -> None:
    def make(folder: str, seed: int) -> dict[str, bytes]:
        root = tmp_path / folder
        return _files(make_synthetic_dataset(root, CATEGORIES, 2, 4, seed, n_train_good=1))

    first, second, other = make("a", 5), make("b", 5), make("c", 6)
    assert len(first) == len(CATEGORIES) * (1 + 2 + 4 + 4)
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if not name.endswith("_mask.png"))


def test_categories_look_different() -> None:
    means = [
        render_synthetic_image(name, np.random.default_rng(0))[0].reshape(-1, 3).mean(axis=0)
        for name in ("widget", "gasket", "bolt")
    ]
    assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]) > 5


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defects_change_exactly_the_masked_product_pixels(kind: str) -> None:
    for index in range(4):
        clean, none = render_synthetic_image("widget", np.random.default_rng([index, 1]), SIZE)
        image, mask = render_synthetic_image(
            "widget", np.random.default_rng([index, 1]), SIZE, (kind,) * (1 + index % 2)
        )
        assert not none.any()
        assert mask.dtype == bool and mask.shape == SIZE
        diff = np.abs(image.astype(int) - clean.astype(int)).mean(axis=2)
        # Visible: well above the texture and noise, which vary by a few grey levels.
        assert diff[mask].mean() > 35, (kind, index, diff[mask].mean())
        if kind == "discoloration":  # soft edge: only sub-threshold change outside the mask
            assert diff[~mask].max() <= DISCOLORATION_THRESHOLD * 255 + 1
        else:
            assert diff[~mask].max() == 0
        # On the product, never on the background: the background is the corner colour.
        corners = np.concatenate([clean[:6, :6], clean[-6:, -6:]]).reshape(-1, 3)
        distance = np.abs(clean.astype(int) - np.median(corners, axis=0)).max(axis=2)
        product = ndimage.binary_fill_holes(ndimage.binary_opening(distance > 25, iterations=2))
        assert not (mask & ~product).any(), (kind, index)


def test_defects_stand_out_from_surrounding_product(synthetic_root: Path) -> None:
    for sample in read_mvtec(synthetic_root, "test"):
        if sample.label != 1:
            continue
        image = load_image(sample.image_path).astype(float)
        mask = load_mask(sample, image.shape[:2])
        ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(
            mask, iterations=2
        )
        surround = np.median(image[ring], axis=0)
        contrast = np.abs(image[mask] - surround).mean(axis=1).mean()
        assert contrast > 30, (sample.image_path, contrast)


def test_render_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="scratch"):
        render_synthetic_image("widget", rng, SIZE, ("dent",))
    with pytest.raises(ValueError, match="height, width"):
        render_synthetic_image("widget", rng, (8, 8))
    with pytest.raises(ValueError, match="folder names"):
        make_synthetic_dataset(Path("unused"), categories=("a/b",))


# --------------------------------------------------------------------------- MVTec-AD


def test_mvtec_missing_mask_names_expected_file(tmp_path: Path) -> None:
    _save(tmp_path / "bottle" / "test" / "good" / "000.png", _rgb())
    _save(tmp_path / "bottle" / "test" / "broken" / "007.png", _rgb())
    expected = tmp_path / "bottle" / "ground_truth" / "broken" / "007_mask.png"
    with pytest.raises(DatasetError, match=r"007_mask\.png") as info:
        read_mvtec(tmp_path)
    assert str(expected) in str(info.value)
    _save(expected, np.zeros((20, 30), dtype=np.uint8))
    samples = read_mvtec(tmp_path)
    assert [(s.defect_type, s.mask_path) for s in samples] == [("broken", expected), ("good", None)]


def test_mvtec_category_filter(synthetic_root: Path) -> None:
    only = read_mvtec(synthetic_root, "test", categories=["widget"])
    assert {s.category for s in only} == {"widget"}
    with pytest.raises(DatasetError, match="gasket"):  # lists the available ones
        read_mvtec(synthetic_root, "test", categories=["nope"])
    with pytest.raises(ValueError, match="train"):
        read_mvtec(synthetic_root, "val")


# --------------------------------------------------------------------------- VisA


def _fake_visa(root: Path) -> Path:
    rows = [("object", "split", "label", "image", "mask")]
    for obj in ("pcb1", "candle"):
        for split, stem in (("train", "0000"), ("test", "0001")):
            rel = f"{obj}/Data/Images/Normal/{stem}.JPG"
            _save(root / rel, _rgb(24, 32))
            rows.append((obj, split, "normal", rel, ""))
        rel = f"{obj}/Data/Images/Anomaly/0100.JPG"
        mask_rel = f"{obj}/Data/Masks/Anomaly/0100.png"
        _save(root / rel, _rgb(24, 32))
        mask = np.zeros((24, 32), dtype=np.uint8)
        mask[5:10, 5:12] = 255
        _save(root / mask_rel, mask)
        rows.append((obj, "test", "anomaly", rel, mask_rel))
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def test_visa_reader(tmp_path: Path) -> None:
    root = _fake_visa(tmp_path)
    test = read_visa(root, "test")
    assert [(s.category, s.image_path.name, s.label) for s in test] == [
        ("candle", "0100.JPG", 1),
        ("candle", "0001.JPG", 0),
        ("pcb1", "0100.JPG", 1),
        ("pcb1", "0001.JPG", 0),
    ]
    anomalous = test[0]
    assert anomalous.mask_path == root / "candle/Data/Masks/Anomaly/0100.png"
    assert anomalous.defect_type == "anomaly" and test[1].defect_type == "good"
    assert test[1].mask_path is None
    assert load_mask(anomalous, (24, 32)).sum() == 5 * 7
    train = read_visa(root, "train", categories=["pcb1"])
    assert [(s.category, s.label) for s in train] == [("pcb1", 0)]
    assert open_dataset(f"visa:{root}", "test", ["candle"]) == test[:2]


def test_visa_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"1cls\.csv"):
        read_visa(tmp_path)
    root = _fake_visa(tmp_path)
    (root / "candle/Data/Masks/Anomaly/0100.png").unlink()
    with pytest.raises(DatasetError, match=r"0100\.png"):
        read_visa(root)
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\npcb1,test,a.JPG\n")
    with pytest.raises(DatasetError, match="object,split,label,image,mask"):
        read_visa(root)


# --------------------------------------------------------------------------- meta.json


def test_meta_json_reader(tmp_path: Path) -> None:
    _save(tmp_path / "bottle/test/good/000.png", _rgb())
    _save(tmp_path / "bottle/test/broken/001.png", _rgb())
    _save(tmp_path / "bottle/gt/broken/001.png", np.zeros((20, 30), dtype=np.uint8))
    _save(tmp_path / "bottle/train/good/002.png", _rgb())

    def entry(img: str, mask: str, specie: str, anomaly: int) -> dict[str, object]:
        return {
            "img_path": img,
            "mask_path": mask,
            "cls_name": "bottle",
            "specie_name": specie,
            "anomaly": anomaly,
        }

    meta = {
        "train": {"bottle": [entry("bottle/train/good/002.png", "", "good", 0)]},
        "test": {
            "bottle": [
                entry("bottle/test/good/000.png", "", "good", 0),
                entry("bottle/test/broken/001.png", "bottle/gt/broken/001.png", "broken", 1),
            ]
        },
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    test = read_meta_json(tmp_path)
    assert test == [
        Sample(
            tmp_path / "bottle/test/broken/001.png",
            tmp_path / "bottle/gt/broken/001.png",
            "bottle",
            1,
            "broken",
        ),
        Sample(tmp_path / "bottle/test/good/000.png", None, "bottle", 0, "good"),
    ]
    assert read_meta_json(tmp_path / "meta.json", "train")[0].image_path.name == "002.png"
    assert open_dataset(f"meta:{tmp_path}") == test
    with pytest.raises(DatasetError, match=r"no 'val' section.*\['test', 'train'\]"):
        read_meta_json(tmp_path, "val")


# --------------------------------------------------------------------------- folders


def test_folder_reader_finds_images_recursively(tmp_path: Path) -> None:
    _save(tmp_path / "b.PNG", _rgb())
    _save(tmp_path / "sub" / "a.jpg", _rgb())
    _save(tmp_path / "sub" / "deeper" / "c.TIF", _rgb())
    (tmp_path / "sub" / "d.Jpeg").write_bytes((tmp_path / "sub" / "a.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._b.PNG").write_bytes(b"AppleDouble junk")
    (tmp_path / "folder.png").mkdir()
    samples = read_folder(tmp_path, category="parts")
    assert [s.image_path.relative_to(tmp_path).as_posix() for s in samples] == [
        "b.PNG",
        "sub/a.jpg",
        "sub/d.Jpeg",
        "sub/deeper/c.TIF",
    ]
    assert {(s.label, s.mask_path, s.category, s.defect_type) for s in samples} == {
        (-1, None, "parts", "")
    }
    assert open_dataset(f"folder:{tmp_path}", categories=["parts"]) == samples


# --------------------------------------------------------------------------- open_dataset


def test_open_dataset_schemes(synthetic_root: Path, tmp_path: Path) -> None:
    assert open_dataset(f"mvtec:{synthetic_root}", "train") == read_mvtec(synthetic_root, "train")
    for bad in (f"coco:{tmp_path}", str(tmp_path), "mvtec:"):
        with pytest.raises(ValueError) as info:
            open_dataset(bad)
        for scheme in ("mvtec:", "visa:", "meta:", "folder:"):
            assert scheme in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        open_dataset(f"mvtec:{tmp_path / 'missing'}")


# --------------------------------------------------------------------------- load_mask


def test_load_mask_thresholds_and_resizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    zero_one = np.zeros((20, 30), dtype=np.uint8)
    zero_one[2:6, 3:9] = 1
    path = _save(tmp_path / "m01.png", zero_one)
    sample = Sample(tmp_path / "img.png", path, "x", 1, "dent")
    assert load_mask(sample, (20, 30)).sum() == 4 * 6

    grey = np.zeros((20, 30), dtype=np.uint8)
    grey[:, :10] = 100  # below 127: background in a 0/255 mask
    grey[:, 20:] = 200
    sample = Sample(tmp_path / "img.png", _save(tmp_path / "m255.png", grey), "x", 1, "dent")
    mask = load_mask(sample, (20, 30))
    assert mask.dtype == bool and mask.sum() == 20 * 10 and mask[:, 20:].all()

    with caplog.at_level(logging.WARNING, logger="clipsam.data.readers"):
        big = load_mask(sample, (40, 60))
    assert big.shape == (40, 60) and big.sum() == 40 * 20 and big[:, 40:].all()
    assert "resizing" in caplog.text

    good = Sample(tmp_path / "img.png", None, "x", 0, "good")
    assert load_mask(good, (5, 7)).shape == (5, 7) and not load_mask(good, (5, 7)).any()
    missing = Sample(tmp_path / "img.png", tmp_path / "nope.png", "x", 1, "dent")
    with pytest.raises(DatasetError, match=r"nope\.png"):
        load_mask(missing, (20, 30))
