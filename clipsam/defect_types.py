"""Which kind of defect a region is: zero-shot from CLIP, then learned from corrections.

A region is described twice, both cheap because the image's CLIP features are already cached:
its **CLIP embedding** (the joint-space patch tokens ``vv`` pooled over the region, weighted by
how much of each patch it covers) and its **shape** (elongation, solidity, size, extent, pieces;
a scratch is long and thin, a spot is round, contamination is ragged).

- **Zero-shot** (no corrections yet): the embedding against prompts built from the label names
  and the category ("a damaged hex nut with a scratch"), as APRIL-GAN compares patches with
  "normal"/"damaged": probabilities ``softmax(100 · cos)``.
- **Learned** (:class:`TypeClassifier`, fitted by the retrain job on corrected regions): one
  multinomial logistic regression per description, combined as a product of experts (their
  log-probabilities add), so neither the 768-dim embedding nor the 5 shape numbers drown the
  other. It travels in the head file's metadata and hot-reloads with the head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.special import softmax
from skimage.measure import regionprops
from torch import Tensor

from clipsam.prompts import TEMPLATES, category_phrase

#: The state phrases a label name is put in: ``{c}`` the category, ``{d}`` the label.
TYPE_FORMS: tuple[str, ...] = ("damaged {c} with {d}", "{c} with {d}", "{d} on a {c}")
#: CLIP's logit scale for the zero-shot probabilities (as for the anomaly maps).
ZERO_SHOT_SCALE = 100.0
#: The shape description's names, in :func:`shape_descriptor` order.
SHAPE_FEATURES: tuple[str, ...] = ("eccentricity", "solidity", "log_area", "extent", "pieces")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RegionDescriptor:
    """What a region looks like to the type classifier."""

    embedding: FloatArray  # (E,) unit norm
    shape: FloatArray  # (len(SHAPE_FEATURES),)


def type_sentences(label: str, category: str | None) -> list[str]:
    """The prompt ensemble for one label: templates × :data:`TYPE_FORMS`."""
    word = " ".join(label.replace("_", " ").replace("-", " ").split()).lower()
    phrase = category_phrase(category)
    return [t.format(f.format(c=phrase, d=word)) for f in TYPE_FORMS for t in TEMPLATES]


def describe_region(mask: npt.NDArray[np.bool_], vv: Tensor, grid: int) -> RegionDescriptor:
    """The region's pooled CLIP embedding (``vv``: (grid², E) tokens) and shape numbers."""
    weights = F.interpolate(
        torch.as_tensor(mask, dtype=torch.float32)[None, None], size=(grid, grid), mode="area"
    ).flatten()
    if float(weights.sum()) <= 0:  # smaller than a patch: the patch under its centre
        ys, xs = np.nonzero(mask)
        row = min(grid - 1, int(ys.mean() * grid / mask.shape[0]))
        col = min(grid - 1, int(xs.mean() * grid / mask.shape[1]))
        weights[row * grid + col] = 1.0
    tokens = F.normalize(vv.float().cpu(), dim=-1)
    pooled = F.normalize((tokens * (weights / weights.sum())[:, None]).sum(0), dim=0)
    return RegionDescriptor(pooled.double().numpy(), shape_descriptor(mask))


def shape_descriptor(mask: npt.NDArray[np.bool_]) -> FloatArray:
    """Elongation, solidity, log area fraction, bounding-box extent, number of pieces."""
    props = regionprops(mask.astype(np.uint8))[0]
    pieces = int(ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))[1])
    return np.array(
        [
            props.eccentricity,
            props.solidity,
            math.log(max(props.area, 1) / mask.size),
            props.extent,
            float(pieces),
        ]
    )


def zero_shot_probs(embeddings: FloatArray, label_text: Tensor) -> FloatArray:
    """(R, L) probabilities of each region embedding (R, E) against label features (L, E)."""
    text = F.normalize(label_text.float().cpu(), dim=-1).double().numpy()
    logits = ZERO_SHOT_SCALE * embeddings @ text.T
    return softmax(logits, axis=-1)


@dataclass
class _Expert:
    """One standardised multinomial logistic regression."""

    mean: FloatArray
    scale: FloatArray
    coef: FloatArray  # (L, D)
    intercept: FloatArray  # (L,)

    def log_proba(self, x: FloatArray) -> FloatArray:
        logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        return np.log(np.clip(softmax(logits, axis=-1), 1e-12, None))

    def to_dict(self) -> dict[str, Any]:
        return {k: np.asarray(v).round(6).tolist() for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Expert:
        fields = ("mean", "scale", "coef", "intercept")
        return cls(*(np.asarray(data[k], dtype=np.float64) for k in fields))


@dataclass
class TypeClassifier:
    """Defect types learned from corrected regions (see the module docstring).

    ``labels`` are the label names it was fitted on, in column order; ``examples`` how many
    corrected regions of each it saw.
    """

    labels: tuple[str, ...]
    embedding: _Expert
    shape: _Expert
    examples: tuple[int, ...] = ()

    def probs(self, regions: Sequence[RegionDescriptor], labels: Sequence[str]) -> FloatArray:
        """(R, len(labels)) probabilities; a label it never saw gets 0 (only a person can
        teach it), the rest are renormalised."""
        emb = np.stack([r.embedding for r in regions])
        shp = np.stack([r.shape for r in regions])
        log_p = self.embedding.log_proba(emb) + self.shape.log_proba(shp)
        known = softmax(log_p, axis=-1)
        out = np.zeros((len(regions), len(labels)))
        for j, label in enumerate(labels):
            if label in self.labels:
                out[:, j] = known[:, self.labels.index(label)]
        total = out.sum(1, keepdims=True)
        return np.divide(out, total, out=np.zeros_like(out), where=total > 0)

    def covers(self, labels: Sequence[str]) -> bool:
        """Whether it can choose among ``labels``: it knows at least two of them."""
        return sum(label in self.labels for label in labels) >= 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "examples": list(self.examples),
            "embedding": self.embedding.to_dict(),
            "shape": self.shape.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> TypeClassifier | None:
        """From head metadata; ``None`` when absent or malformed (older heads have none)."""
        try:
            return cls(
                labels=tuple(str(label) for label in data["labels"]),
                embedding=_Expert.from_dict(data["embedding"]),
                shape=_Expert.from_dict(data["shape"]),
                examples=tuple(int(n) for n in data.get("examples", ())),
            )
        except (KeyError, TypeError, ValueError):
            return None


def fit_type_classifier(
    regions: Sequence[RegionDescriptor], labels: Sequence[str], strength: float = 0.1
) -> TypeClassifier | None:
    """Fit both experts on corrected regions; ``None`` with fewer than two labels seen.

    ``strength`` is scikit-learn's inverse regularisation ``C``: small, because a project
    teaches from a handful of regions per label.
    """
    names = tuple(sorted(set(labels)))
    if len(names) < 2:
        return None
    y = np.array([names.index(label) for label in labels])
    experts = [
        _fit_expert(np.stack([r.embedding for r in regions]), y, strength),
        _fit_expert(np.stack([r.shape for r in regions]), y, 1.0),
    ]
    counts = tuple(int((y == k).sum()) for k in range(len(names)))
    return TypeClassifier(names, experts[0], experts[1], counts)


def _fit_expert(x: FloatArray, y: npt.NDArray[np.int_], strength: float) -> _Expert:
    from sklearn.linear_model import LogisticRegression  # imported only where it trains

    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    model = LogisticRegression(C=strength, max_iter=3000).fit((x - mean) / scale, y)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # scikit-learn's binary case: one row for class 1
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    return _Expert(mean, scale, coef.astype(np.float64), intercept.astype(np.float64))
