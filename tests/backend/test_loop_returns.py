"""The correction loop improves what the backend *returns* (issue 12, item 2).

A backend on the shipped ``tiny`` preset (micro-CLIP, micro-SAM; embedded Redis, in-process
worker) is corrected through /webhook as Label Studio would send it: 40 images of a part it
never saw, each with its true mask as a brush annotation. What it returns from /predict on
other images of that part (BrushLabels RLE decoded back to masks with label-studio-sdk) is
scored before and after, as an annotator would see it. Two families: a held-out category of
the miniature world, and tiles from a generator written for these tests (``tests/tiles.py``).

Every bar has a companion that breaks the loop on purpose and checks the same bars reject it:
the corrections' masks shuffled onto the wrong images, and the calibrated thresholds ignored.
Figures (and how the bars were set from them) are in docs/method.md §13.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

import clipsam
import clipsam.pipeline
from backend.app import create_app
from backend.model import ModelService
from backend.settings import Settings
from clipsam.weights import MICRO_CLIP_WEIGHTS
from correction_loop.registry import ModelRegistry
from tests import tiles
from tests.backend.conftest import file_server, serve
from tests.helpers import LABEL_CONFIG, annotation_event, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not MICRO_CLIP_WEIGHTS.is_file(), reason="the miniature world's micro-CLIP is not shipped"
    ),
]

PROJECT = 7
CORRECTIONS = 40
#: Held-out images the returned regions are scored on (not among the corrections).
TEST_IMAGES, TEST_DEFECT_RATE = 24, 0.75
WORLD_CATEGORY = "carpet"  # one of clipsam.data.world.HELDOUT_CATEGORIES

#: Bars, set from measurement with margins (docs/method.md §13).
DICE_GAIN = 0.15  # mean Dice of the returned regions on the defective test images, after - before
FOUND_AFTER = 0.6  # share of defective test images with any returned region, after
#: Share of good test images with a region before any correction: the training-free head at its
#: calibrated thresholds (measured 0 % on both families; 100 % on carpet with them ignored).
ALARMS_BEFORE = 0.5

#: The backend's pipeline: the shipped micro-CLIP; SAM off until the micro-SAM weights ship
#: (with SAM on, the returned regions are MMR's fused masks; measure again then).
PIPELINE = {"weights": "pretrained", "use_sam": False}


@dataclasses.dataclass(frozen=True)
class Labeled:
    image: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass
class LoopResult:
    dice_before: float
    dice_after: float
    found_before: float
    found_after: float
    false_alarms_before: float
    false_alarms_after: float
    status: str  # of the retrained head: promoted / rejected
    reason: str
    seconds: float  # first webhook → new model_version (inf when none came)

    def shortfalls(self) -> list[str]:
        """Which bars this run misses (none: the loop improved what it returns)."""
        out = []
        if self.dice_after - self.dice_before < DICE_GAIN:
            out.append(f"Dice {self.dice_before:.3f} -> {self.dice_after:.3f} (< +{DICE_GAIN})")
        if self.found_after < FOUND_AFTER:
            out.append(
                f"regions on {self.found_after:.0%} of defective images (< {FOUND_AFTER:.0%})"
            )
        if self.false_alarms_before > ALARMS_BEFORE:
            out.append(
                f"regions on {self.false_alarms_before:.0%} of good images before the "
                f"corrections (> {ALARMS_BEFORE:.0%})"
            )
        if self.seconds == math.inf:  # how fast is printed, not judged: benchmarks/retrain.py
            out.append("no new model_version served")
        return out


# ---- the two families -------------------------------------------------------------------------


def world_family(count: int, defect_rate: float, seed: int) -> list[Labeled]:
    from training.miniature.protocol import world_images

    return [
        Labeled(i.image, i.mask) for i in world_images([WORLD_CATEGORY], count, defect_rate, seed)
    ]


def tile_family(count: int, defect_rate: float, seed: int) -> list[Labeled]:
    return [Labeled(t.image, t.mask) for t in tiles.tiles(count, defect_rate, seed)]


FAMILIES = {
    "world": (world_family, WORLD_CATEGORY),
    "tiles": (tile_family, tiles.CATEGORY),
}


# ---- the loop, as Label Studio drives it -------------------------------------------------------


def returned_mask(result: dict, shape: tuple[int, int]) -> np.ndarray:
    """The union of the BrushLabels regions of one /predict result, decoded with the SDK."""
    mask = np.zeros(shape, dtype=bool)
    for item in result["result"]:
        if item["type"] != "brushlabels":
            continue
        height, width = item["original_height"], item["original_width"]
        assert (height, width) == shape
        rgba = np.asarray(decode_rle(item["value"]["rle"])).reshape(height, width, 4)
        mask |= rgba[:, :, 3] > 127
    return mask


def score(masks: Sequence[np.ndarray], truths: Sequence[Labeled]) -> tuple[float, float, float]:
    """(mean Dice on defective images, share of them with regions, share of good with any)."""
    dice, found, alarms, goods = [], 0, 0, 0
    for predicted, truth in zip(masks, truths, strict=True):
        if truth.mask.any():
            total = predicted.sum() + truth.mask.sum()
            dice.append(2.0 * float((predicted & truth.mask).sum()) / float(total))
            found += bool(predicted.any())
        else:
            goods += 1
            alarms += bool(predicted.any())
    return float(np.mean(dice)), found / len(dice), alarms / max(goods, 1)


@contextmanager
def images_served(root: Path, items: Sequence[Labeled], prefix: str) -> Iterator[list[str]]:
    root.mkdir(parents=True, exist_ok=True)
    for index, item in enumerate(items):
        Image.fromarray(item.image).save(root / f"{prefix}{index:03d}.png")
    with file_server(root) as url:
        yield [f"{url}/{prefix}{index:03d}.png" for index in range(len(items))]


@contextmanager
def thresholds_ignored() -> Iterator[None]:
    """Break: calibration bypassed everywhere (serving, the gate's region metrics)."""
    saved = clipsam.pipeline.calibrate_map, clipsam.pipeline.calibrate_score
    clipsam.pipeline.calibrate_map = lambda maps, thresholds: maps  # type: ignore[assignment]
    clipsam.pipeline.calibrate_score = lambda s, thresholds: s  # type: ignore[assignment]
    try:
        yield
    finally:
        clipsam.pipeline.calibrate_map, clipsam.pipeline.calibrate_score = saved


def run_loop(
    tmp: Path,
    family: str,
    broken: str | None = None,
    seed: int = 0,
    epochs: int | None = None,
    before_only: bool = False,
    **options: object,
) -> LoopResult:
    """Corrections → /webhook → retrain → hot reload; /predict scored before and after.

    ``before_only`` stops after scoring what the backend returns before any correction (the
    after-fields then repeat the before-fields, with no retrain: status ``not run``)."""
    make, category = FAMILIES[family]
    corrections = make(CORRECTIONS, 0.8, seed=100 + seed)
    tests = make(TEST_IMAGES, TEST_DEFECT_RATE, seed=200 + seed)
    masks = [c.mask for c in corrections]
    if broken == "shuffled":  # each image gets the next image's mask: no image keeps its own
        masks = masks[1:] + masks[:1]
    # fresh: cold caches, training-free head
    pipeline = clipsam.load_pipeline("tiny", **{"weights": "random", **options})
    settings = Settings(
        model_dir=tmp / "model_dir", preset="tiny", allowed_hosts=("127.0.0.1",),
        default_category=category, retrain_every=CORRECTIONS, reload_poll=0.5,
        retrain_promote_early=False,  # one head judged: what the whole retrain returns
    )  # fmt: skip
    if epochs is not None:
        settings = dataclasses.replace(settings, retrain_epochs=epochs)
    with (
        thresholds_ignored() if broken == "no_threshold" else _nothing(),
        images_served(tmp / "images", [*corrections, *tests], "img") as urls,
        serve(create_app(settings, ModelService(settings, loader=lambda: pipeline))) as url,
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        wait_for(lambda: client.get("/health").json()["ready"], timeout=120, what="the model")
        first = _model_version(client)
        test_urls = urls[CORRECTIONS:]
        dice_before, found_before, alarms_before = score(
            _predict(client, test_urls, category, tests), tests
        )
        if before_only:
            return LoopResult(
                dice_before, dice_before, found_before, found_before, alarms_before,
                alarms_before, "not run", "before_only", float("inf"),
            )  # fmt: skip
        started = time.monotonic()
        for index, (link, mask) in enumerate(zip(urls[:CORRECTIONS], masks, strict=True)):
            event = annotation_event(
                1000 + index, 1000 + index, link, mask, category=category, project=PROJECT
            )
            assert client.post("/webhook", json=event).json() == {"status": "ok"}
        registry = ModelRegistry(settings.model_dir)
        (judged,) = wait_for(
            lambda: [v for v in registry.versions() if v.status != "candidate"] or None,
            timeout=300,
            what="the retrained head to be judged",
        )
        seconds = float("inf")
        if judged.status == "promoted":
            wait_for(lambda: _model_version(client) != first, timeout=60, what="the hot reload")
            seconds = time.monotonic() - started
        dice_after, found_after, alarms_after = score(
            _predict(client, test_urls, category, tests), tests
        )
    return LoopResult(
        dice_before, dice_after, found_before, found_after, alarms_before, alarms_after,
        judged.status, judged.reason, seconds,
    )  # fmt: skip


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _model_version(client: httpx.Client) -> str:
    response = client.post("/setup", json={"project": str(PROJECT), "schema": LABEL_CONFIG})
    return str(response.json()["model_version"])


def _predict(
    client: httpx.Client, urls: Sequence[str], category: str, truths: Sequence[Labeled]
) -> list[np.ndarray]:
    tasks = [
        {"id": 5000 + i, "data": {"image": u, "category": category}} for i, u in enumerate(urls)
    ]
    response = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    return [returned_mask(r, t.mask.shape) for r, t in zip(results, truths, strict=True)]


# ---- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_corrections_improve_the_returned_regions(tmp_path, family):
    result = run_loop(tmp_path, family, **PIPELINE)
    print(f"{family}: {result}")
    assert result.status == "promoted", result.reason
    assert not result.shortfalls(), (result.shortfalls(), result)


@pytest.mark.parametrize(
    ("family", "broken"),
    [
        ("world", "shuffled"),
        ("tiles", "shuffled"),
        ("tiles", "no_threshold"),
    ],
)
def test_a_broken_loop_misses_the_same_bars(tmp_path, family, broken):
    result = run_loop(tmp_path, family, broken, **PIPELINE)
    print(f"{family}, {broken}: {result}")
    assert result.shortfalls(), result


def test_without_its_thresholds_the_world_loop_fails_before_any_correction(tmp_path):
    """The world family with the thresholds ignored meets the Dice bars (0.16 -> 0.48: after
    160 steps the trained head's raw maps cross 0.5 by themselves); what breaks is the
    training-free head's regions on every good image before the corrections (docs/method.md
    §13, "The loop, measured"). That bar is decided before the first correction, so the run
    stops there: the retrain after it could not remove the shortfall."""
    result = run_loop(tmp_path, "world", "no_threshold", before_only=True, **PIPELINE)
    print(f"world, no_threshold, before: {result}")
    assert result.false_alarms_before > ALARMS_BEFORE, result
    assert result.shortfalls(), result
