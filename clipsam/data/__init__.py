"""Dataset readers (MVTec-AD, VisA, meta.json, folders) and a synthetic defect generator."""

from __future__ import annotations

from clipsam.data.readers import (
    IMAGE_EXTENSIONS,
    SCHEMES,
    DatasetError,
    Sample,
    group_by_category,
    load_mask,
    open_dataset,
    read_folder,
    read_meta_json,
    read_mvtec,
    read_visa,
)
from clipsam.data.synthetic import DEFECT_TYPES, make_synthetic_dataset, render_synthetic_image

__all__ = [
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "SCHEMES",
    "DatasetError",
    "Sample",
    "group_by_category",
    "load_mask",
    "make_synthetic_dataset",
    "open_dataset",
    "read_folder",
    "read_meta_json",
    "read_mvtec",
    "read_visa",
    "render_synthetic_image",
]
