"""Reading anomaly-detection datasets (MVTec-AD, VisA, meta.json, plain folders) into one list.

Every reader returns the same :class:`Sample` records, sorted deterministically, so evaluation,
training and pre-annotation never need to know which layout the images came from. Layout
problems (a missing mask, a malformed split file) are raised as :class:`DatasetError` at read
time, with the path that was expected, rather than surfacing later as a silent empty mask.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: File suffixes (lower case) that count as images when scanning folders.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

#: Schemes understood by :func:`open_dataset`.
SCHEMES = ("mvtec", "visa", "meta", "folder")

_SPLITS = ("train", "test")
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


class DatasetError(ValueError):
    """A dataset folder does not have the layout its reader expects."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset, with where its ground truth lives (if anywhere).

    ``label`` is 1 for anomalous, 0 for good and -1 for unknown (plain folders);
    ``defect_type`` is ``"good"``, the defect name, or ``""`` when unknown.
    """

    image_path: Path
    mask_path: Path | None
    category: str
    label: int
    defect_type: str


# --------------------------------------------------------------------------- MVTec-AD


def read_mvtec(
    root: str | Path, split: str = "test", categories: Iterable[str] | None = None
) -> list[Sample]:
    """Read the MVTec-AD layout ``root/<cls>/{train,test}/<defect|good>/*.png``.

    Defect masks are expected at ``root/<cls>/ground_truth/<defect>/<stem>_mask.png``.
    """
    root = _existing_dir(root, "MVTec-AD root")
    _check_split(split)
    available = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())
    )
    if not available:
        raise DatasetError(
            f"no MVTec-AD categories in {root}: expected sub-folders like "
            f"{root}/<category>/test/good/, found none with a 'train' or 'test' folder"
        )
    chosen = _choose_categories(available, categories, root)

    samples: list[Sample] = []
    for category in chosen:
        split_dir = root / category / split
        if not split_dir.is_dir():
            logger.warning("MVTec-AD category %r has no %s folder, skipping", category, split_dir)
            continue
        for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            for image_path in _images_in(defect_dir):
                if defect == "good":
                    samples.append(Sample(image_path, None, category, 0, "good"))
                    continue
                mask_path = _mvtec_mask(root / category / "ground_truth" / defect, image_path)
                samples.append(Sample(image_path, mask_path, category, 1, defect))
    logger.info(
        "MVTec-AD %s: %d %s images in %d categories", root, len(samples), split, len(chosen)
    )
    return samples


def _mvtec_mask(mask_dir: Path, image_path: Path) -> Path:
    expected = mask_dir / f"{image_path.stem}_mask.png"
    if expected.is_file():
        return expected
    # Re-encoded copies of MVTec sometimes store masks as .bmp/.jpg; accept any image suffix.
    if mask_dir.is_dir():
        for candidate in sorted(mask_dir.glob(f"{image_path.stem}_mask.*")):
            if candidate.suffix.lower() in IMAGE_EXTENSIONS:
                return candidate
    raise DatasetError(
        f"defect image {image_path} has no ground-truth mask: expected {expected} "
        f"(MVTec-AD layout <cls>/ground_truth/<defect>/<stem>_mask.png)"
    )


# --------------------------------------------------------------------------- VisA


def read_visa(
    root: str | Path, split: str = "test", categories: Iterable[str] | None = None
) -> list[Sample]:
    """Read VisA through its split file ``root/split_csv/1cls.csv``.

    The csv has the header ``object,split,label,image,mask``; image and mask paths are relative
    to ``root`` and the mask is empty for normal images.
    """
    root = _existing_dir(root, "VisA root")
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DatasetError(
            f"VisA split file not found: expected {csv_path} (the 1-class split shipped with VisA, "
            f"header {','.join(_VISA_COLUMNS)})"
        )
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in _VISA_COLUMNS if name not in header]
        if missing:
            raise DatasetError(
                f"{csv_path} lacks columns {missing}: expected header "
                f"{','.join(_VISA_COLUMNS)}, got {','.join(header) or '(empty file)'}"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]

    splits_present = sorted({row["split"] for row in rows})
    rows = [row for row in rows if row["split"] == split]
    if not rows:
        raise DatasetError(f"{csv_path} has no rows with split={split!r}; splits: {splits_present}")
    chosen = set(_choose_categories(sorted({row["object"] for row in rows}), categories, csv_path))

    samples: list[Sample] = []
    for row in rows:
        if row["object"] not in chosen:
            continue
        label_text = row["label"].lower()
        if label_text not in ("normal", "anomaly"):
            raise DatasetError(
                f"{csv_path}: label must be 'normal' or 'anomaly', got {row['label']!r} "
                f"(row for {row['image']!r})"
            )
        image_path = root / row["image"]
        if label_text == "normal":
            samples.append(Sample(image_path, None, row["object"], 0, "good"))
            continue
        if not row["mask"]:
            raise DatasetError(
                f"{csv_path}: anomalous image {row['image']!r} has an empty mask "
                f"column; expected a path like {row['object']}/Data/Masks/Anomaly/<name>.png"
            )
        mask_path = root / row["mask"]
        samples.append(Sample(image_path, mask_path, row["object"], 1, "anomaly"))
    _check_files_exist(samples, csv_path, root)
    samples.sort(key=_sort_key)
    logger.info("VisA %s: %d %s images in %d categories", root, len(samples), split, len(chosen))
    return samples


# --------------------------------------------------------------------------- meta.json


def read_meta_json(
    path: str | Path, split: str = "test", categories: Iterable[str] | None = None
) -> list[Sample]:
    """Read a ``meta.json`` as written by APRIL-GAN, AnomalyCLIP and AdaCLIP.

    ``path`` is the json file or the folder holding ``meta.json``; the paths inside are
    relative to that folder.
    """
    path = Path(path).expanduser()
    json_path = path / "meta.json" if path.is_dir() else path
    if not json_path.is_file():
        raise DatasetError(f"meta.json not found: expected the file or its folder, got {path}")
    base = json_path.parent
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or split not in meta or not isinstance(meta[split], dict):
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise DatasetError(
            f"{json_path} has no {split!r} section: expected "
            f'{{"train": {{cls: [...]}}, "test": {{cls: [...]}}}}, got keys {keys}'
        )
    by_class: dict[str, Any] = meta[split]
    chosen = _choose_categories(sorted(by_class), categories, json_path)

    samples: list[Sample] = []
    for category in chosen:
        for entry in by_class[category]:
            samples.append(_meta_sample(entry, category, base, json_path))
    _check_files_exist(samples, json_path, base)
    samples.sort(key=_sort_key)
    logger.info("meta.json %s: %d %s images", json_path, len(samples), split)
    return samples


def _meta_sample(entry: Any, category: str, base: Path, json_path: Path) -> Sample:
    if not isinstance(entry, dict) or "img_path" not in entry:
        raise DatasetError(
            f"{json_path}: entries must be objects with img_path, mask_path, cls_name, "
            f"specie_name, anomaly; got {entry!r:.200}"
        )
    anomaly = int(entry.get("anomaly", 0))
    if anomaly not in (0, 1):
        raise DatasetError(f"{json_path}: 'anomaly' must be 0 or 1, got {anomaly} in {entry!r}")
    image_path = base / str(entry["img_path"])
    category = str(entry.get("cls_name") or category)
    mask_text = str(entry.get("mask_path") or "")
    if anomaly == 0:
        return Sample(image_path, base / mask_text if mask_text else None, category, 0, "good")
    if not mask_text:
        raise DatasetError(
            f"{json_path}: anomalous image {entry['img_path']!r} has an empty mask_path; "
            f"expected a mask path relative to {base}"
        )
    defect = str(entry.get("specie_name") or "")
    return Sample(image_path, base / mask_text, category, 1, defect)


# --------------------------------------------------------------------------- plain folders


def read_folder(root: str | Path, category: str = "") -> list[Sample]:
    """Every image under ``root`` (recursive, any case of suffix), as unlabeled samples.

    Hidden files and folders are skipped (macOS ``._name.png`` files are not images).
    """
    root = Path(root).expanduser()
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(
                f"{root} is not an image file: expected one of {sorted(IMAGE_EXTENSIONS)}"
            )
        return [Sample(root, None, category, -1, "")]
    root = _existing_dir(root, "image folder")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )
    if not paths:
        logger.warning("no image files (%s) under %s", ", ".join(sorted(IMAGE_EXTENSIONS)), root)
    return [Sample(p, None, category, -1, "") for p in paths]


# --------------------------------------------------------------------------- dispatch


def open_dataset(
    spec: str, split: str = "test", categories: Iterable[str] | None = None
) -> list[Sample]:
    """Open ``"mvtec:PATH"``, ``"visa:PATH"``, ``"meta:PATH"`` or ``"folder:PATH"``.

    One string is easy to pass on a command line or in a config. For ``folder:`` the split is
    ignored and a single category, if given, names the samples.
    """
    valid = ", ".join(f"{scheme}:PATH" for scheme in SCHEMES)
    scheme, sep, rest = spec.partition(":")
    scheme = scheme.strip().lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"unknown dataset spec {spec!r}: expected one of {valid}")
    if not rest.strip():
        raise ValueError(f"dataset spec {spec!r} has no path: expected one of {valid}")
    path = Path(rest.strip()).expanduser()
    if not path.exists():
        raise ValueError(f"dataset path does not exist: {path} (from spec {spec!r})")
    if scheme == "mvtec":
        return read_mvtec(path, split, categories)
    if scheme == "visa":
        return read_visa(path, split, categories)
    if scheme == "meta":
        return read_meta_json(path, split, categories)
    names = list(categories) if categories is not None else []
    if len(names) > 1:
        raise ValueError(f"folder: datasets hold one category, got {names}")
    return read_folder(path, category=names[0] if names else "")


# --------------------------------------------------------------------------- masks


def load_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Return the sample's ground truth as a bool ``H×W`` array matching ``shape``.

    Good and unlabeled samples give all-False. Masks stored as 0/255 and as 0/1 both work.
    A mask of a different size is resized (nearest) with a warning, since some re-encoded
    dataset copies downscale images but not masks.
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {shape}")
    height, width = int(shape[0]), int(shape[1])
    if sample.mask_path is None:
        if sample.label == 1:
            logger.warning("anomalous sample %s has no mask; using an empty one", sample.image_path)
        return np.zeros((height, width), dtype=bool)
    try:
        with Image.open(sample.mask_path) as raw:
            raw.load()
            img = ImageOps.exif_transpose(raw) or raw
            if img.mode == "P":
                # Palette masks store class indices; anything but index 0 is foreground.
                mask = np.asarray(img) > 0
            else:
                gray = np.asarray(img.convert("L"))
                mask = gray > 0 if gray.max() <= 1 else gray > 127
    except FileNotFoundError as exc:
        raise DatasetError(
            f"mask file not found: {sample.mask_path} (for image {sample.image_path})"
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"mask {sample.mask_path} is not a readable image: {exc}") from exc
    if mask.shape != (height, width):
        logger.warning(
            "mask %s is %dx%d (H×W) but the image is %dx%d; resizing with nearest neighbour",
            sample.mask_path,
            mask.shape[0],
            mask.shape[1],
            height,
            width,
        )
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (width, height), Image.Resampling.NEAREST
        )
        mask = np.asarray(resized) > 127
    return np.ascontiguousarray(mask, dtype=bool)


def group_by_category(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Split samples per category (sorted by name), keeping their order inside each."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.category, []).append(sample)
    return {name: groups[name] for name in sorted(groups)}


# --------------------------------------------------------------------------- helpers


def _existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        raise DatasetError(f"{what} must be a folder, but {path} {state}")
    return path


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def _choose_categories(
    available: Sequence[str], wanted: Iterable[str] | None, where: Path
) -> list[str]:
    if wanted is None:
        return list(available)
    if isinstance(wanted, str):  # a lone name, not an iterable of characters
        wanted = [wanted]
    names = list(dict.fromkeys(wanted))
    unknown = [name for name in names if name not in available]
    if unknown:
        raise DatasetError(
            f"unknown categories {unknown} in {where}: available are {list(available)}"
        )
    return sorted(names)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _check_files_exist(samples: Sequence[Sample], source: Path, base: Path) -> None:
    """Fail once, listing a few missing files, when a split file points at the wrong root."""
    missing = [
        path
        for sample in samples
        for path in (sample.image_path, sample.mask_path)
        if path is not None and not path.is_file()
    ]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DatasetError(
            f"{len(missing)} files listed in {source} do not exist (paths are taken relative "
            f"to {base}), e.g. {shown}"
        )


def _sort_key(sample: Sample) -> tuple[str, str]:
    return sample.category, str(sample.image_path)
