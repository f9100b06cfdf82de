"""Write labelled images in the VisA layout, so the published protocol can be run end to end
on data made here (the MVTec-AD layout is ``clipsam.data.make_synthetic_dataset``'s).

VisA (method spec §8): ``root/<cls>/Data/Images/{Anomaly,Normal}/*.JPG``,
``root/<cls>/Data/Masks/Anomaly/*.png`` and the split file ``root/split_csv/1cls.csv`` with
the header ``object,split,label,image,mask`` (paths relative to root, mask empty for normal
images), as ``clipsam.data.read_visa`` reads it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clipsam.data import DEFECT_TYPES, render_synthetic_image

#: One labelled image: (category, split, RGB uint8 image, bool mask or None for normal).
Item = tuple[str, str, np.ndarray, np.ndarray | None]


def write_visa(root: str | Path, items: Iterable[Item]) -> Path:
    """Write ``items`` under ``root`` in the VisA layout; returns ``root``.

    Images are JPEG (quality 95) as in VisA; masks are 0/255 PNG. A mask that is all False
    makes the image normal.
    """
    root = Path(root)
    rows: list[dict[str, str]] = []
    counters: dict[tuple[str, str], int] = {}
    for category, split, image, mask in items:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        anomalous = mask is not None and bool(np.asarray(mask).any())
        kind = "Anomaly" if anomalous else "Normal"
        index = counters.get((category, kind), 0)
        counters[(category, kind)] = index + 1
        image_rel = Path(category, "Data", "Images", kind, f"{index:03d}.JPG")
        (root / image_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
            root / image_rel, "JPEG", quality=95
        )
        mask_rel = ""
        if anomalous:
            path = Path(category, "Data", "Masks", "Anomaly", f"{index:03d}.png")
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(root / path)
            mask_rel = path.as_posix()
        rows.append(
            {
                "object": category,
                "split": split,
                "label": "anomaly" if anomalous else "normal",
                "image": image_rel.as_posix(),
                "mask": mask_rel,
            }
        )
    split_dir = root / "split_csv"
    split_dir.mkdir(parents=True, exist_ok=True)
    with (split_dir / "1cls.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["object", "split", "label", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def synthetic_visa(
    root: str | Path,
    categories: Sequence[str] = ("gadget",),
    n_good: int = 4,
    n_defect: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    n_train_good: int = 2,
) -> Path:
    """A small synthetic dataset in the VisA layout (``clipsam.data`` renderer), like
    ``make_synthetic_dataset`` writes in the MVTec-AD layout."""

    def items() -> Iterable[Item]:
        for c_index, category in enumerate(categories):
            for split, count, defects in (
                ("train", n_train_good, False),
                ("test", n_good, False),
                ("test", n_defect, True),
            ):
                for index in range(count):
                    rng = np.random.default_rng([seed, c_index, defects, split == "test", index])
                    kinds = (DEFECT_TYPES[index % len(DEFECT_TYPES)],) if defects else ()
                    image, mask = render_synthetic_image(
                        category, rng, size, kinds, style_seed=seed
                    )
                    yield category, split, image, mask if defects else None

    return write_visa(root, items())


def world_visa(
    root: str | Path,
    categories: Sequence[str],
    n_good: int = 8,
    n_defect: int = 12,
    seed: int = 0,
    size: tuple[int, int] = (224, 224),
) -> Path:
    """The miniature world's ``categories`` (``clipsam.data.world``) in the VisA layout, test
    split only: per category ``n_good`` normal images and ``n_defect`` images with one or two
    defects of one kind, the kinds taken round-robin over ``WORLD_DEFECT_TYPES`` (as
    ``make_world_dataset`` does for the MVTec-AD layout)."""
    from clipsam.data.world import WORLD_DEFECT_TYPES, render_sample

    def items() -> Iterable[Item]:
        for c_index, category in enumerate(categories):
            for defective, count in ((False, n_good), (True, n_defect)):
                for index in range(count):
                    rng = np.random.default_rng([seed, 4243, c_index, defective, index])
                    kinds: tuple[str, ...] = ()
                    if defective:
                        kind = WORLD_DEFECT_TYPES[index % len(WORLD_DEFECT_TYPES)]
                        kinds = (kind,) * int(rng.integers(1, 3))
                    sample = render_sample(category, rng, size, kinds)
                    yield category, "test", sample.image, sample.mask if defective else None

    return write_visa(root, items())
