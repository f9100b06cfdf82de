"""correction_loop/corrections.py: mask RLE, and Label Studio payloads → Correction."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from correction_loop.corrections import Correction, correction_from_event, decode_rle, encode_rle
from tests.correction_loop.conftest import (
    IMAGE_URL,
    blob_mask,
    brush_item,
    choice_item,
    make_event,
    polygon_item,
    rectangle_item,
)


# -- RLE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, seed", [((1, 1), 0), ((1, 7), 1), ((5, 1), 2), ((37, 53), 3), ((64, 64), 4)]
)
def test_rle_round_trip_random_masks(shape: tuple[int, int], seed: int) -> None:
    mask = np.random.default_rng(seed).random(shape) < 0.4
    rle = encode_rle(mask)
    assert rle["size"] == list(shape)
    assert sum(rle["counts"]) == mask.size
    decoded = decode_rle(rle)
    assert decoded.dtype == bool
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, mask)


def test_rle_known_code_is_row_major_and_starts_with_false() -> None:
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    assert encode_rle(mask) == {"counts": [1, 3, 2], "size": [2, 3]}
    starts_true = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)
    assert encode_rle(starts_true) == {"counts": [0, 2, 3, 1], "size": [2, 3]}
    np.testing.assert_array_equal(decode_rle({"counts": [0, 2, 3, 1], "size": [2, 3]}), starts_true)


def test_rle_all_false_all_true_and_empty() -> None:
    assert encode_rle(np.zeros((4, 6), dtype=bool)) == {"counts": [24], "size": [4, 6]}
    assert encode_rle(np.ones((4, 6), dtype=bool)) == {"counts": [0, 24], "size": [4, 6]}
    assert not decode_rle({"counts": [24], "size": [4, 6]}).any()
    assert decode_rle({"counts": [0, 24], "size": [4, 6]}).all()
    empty = encode_rle(np.zeros((0, 5), dtype=bool))
    assert empty == {"counts": [], "size": [0, 5]}
    assert decode_rle(empty).shape == (0, 5)


def test_rle_accepts_non_bool_masks_and_is_json_safe() -> None:
    mask = np.array([[0, 255, 3], [0, 0, 7]], dtype=np.uint8)
    rle = encode_rle(mask)
    assert json.loads(json.dumps(rle)) == rle  # plain ints, not numpy scalars
    np.testing.assert_array_equal(decode_rle(rle), mask > 0)


def test_encode_rle_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_rle(np.zeros((2, 3, 4), dtype=bool))


@pytest.mark.parametrize(
    "rle, message",
    [
        ({"counts": [1, 3, 1], "size": [2, 3]}, "covers 5 pixels"),  # truncated run
        ({"counts": [1, 3, 3], "size": [2, 3]}, "covers 7 pixels"),  # overlong run
        ({"counts": [4, -1, 3], "size": [2, 3]}, "non-negative"),
        ({"counts": [[1, 5]], "size": [2, 3]}, "non-negative"),  # not a flat list
        ({"counts": ["a"], "size": [2, 3]}, "not a mask RLE"),
        ({"size": [2, 3]}, "not a mask RLE"),
        ({"counts": [6]}, "not a mask RLE"),
        ({"counts": [6], "size": [2]}, "not a mask RLE"),
        ({"counts": [6], "size": None}, "not a mask RLE"),
    ],
)
def test_decode_rle_rejects_corrupted_codes(rle: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_rle(rle)


# -- Correction record ----------------------------------------------------------------------------
def _correction(**overrides) -> Correction:
    values = {
        "annotation_id": 7,
        "task_id": 3,
        "project": "3",
        "image": IMAGE_URL,
        "category": "bottle",
        "mask_rle": {"counts": [2, 2], "size": [2, 2]},
        "labels": ["Defect"],
        "has_defect": True,
    }
    values.update(overrides)
    return Correction(**values)


def test_correction_json_round_trip_is_canonical() -> None:
    correction = _correction()
    text = correction.to_json()
    assert Correction.from_json(text) == correction
    assert Correction.from_json(text.encode()) == correction
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys
    assert _correction().to_json() == text
    assert _correction(updated_at="later").to_json() != text


def test_correction_from_json_ignores_unknown_fields_and_defaults_the_rest() -> None:
    text = json.dumps(
        {
            "annotation_id": 1,
            "task_id": 2,
            "project": "9",
            "image": "x.png",
            "category": None,
            "mask_rle": None,
            "future": 1,
        }
    )
    correction = Correction.from_json(text)
    assert correction.annotation_id == 1
    assert correction.mask_rle is None
    assert correction.labels == []
    assert correction.has_defect is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "JSON object"),
        (
            '{"annotation_id": 1, "task_id": 2, "category": null}',
            r"lacks \['image', 'mask_rle', 'project'\]",
        ),
        # Every field without a default is required, not only the ids (was a TypeError).
        (
            '{"annotation_id": 1, "task_id": 2, "project": "3", "image": "a.png"}',
            r"lacks \['category', 'mask_rle'\]",
        ),
        ("not json", "Expecting value"),
    ],
)
def test_correction_from_json_rejects_bad_records(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Correction.from_json(text)


def test_correction_mask_checks_shape() -> None:
    correction = _correction()
    np.testing.assert_array_equal(correction.mask(), [[False, False], [True, True]])
    np.testing.assert_array_equal(correction.mask((2, 2)), [[False, False], [True, True]])
    with pytest.raises(ValueError, match=r"annotation 7: mask is \(2, 2\), image is \(3, 2\)"):
        correction.mask((3, 2))
    sizeless = _correction(mask_rle=None, has_defect=False)
    with pytest.raises(ValueError, match="annotation 7 has no mask size"):
        sizeless.mask()
    zeros = sizeless.mask((3, 4))
    assert zeros.shape == (3, 4)
    assert zeros.dtype == bool
    assert not zeros.any()


# -- a full webhook event -----------------------------------------------------------------------
def test_brush_event_becomes_exact_correction() -> None:
    drawn = blob_mask((37, 53))
    event = make_event([brush_item(drawn)])
    correction = correction_from_event(event)
    assert correction.annotation_id == 101
    assert correction.task_id == 11
    assert correction.project == "3"
    assert correction.image == IMAGE_URL
    assert correction.category == "bottle"
    assert correction.labels == ["Defect"]
    assert correction.annotator == 1
    assert correction.created_at == "2025-06-02T10:00:00.000000Z"
    assert correction.updated_at == "2025-06-02T10:00:30.000000Z"
    assert correction.was_cancelled is False
    assert correction.ground_truth is False
    assert correction.has_defect is True
    assert correction.mask_rle["size"] == [37, 53]
    np.testing.assert_array_equal(correction.mask(), drawn)
    np.testing.assert_array_equal(correction.mask((37, 53)), drawn)


def test_brush_with_soft_alpha_counts_any_nonzero_pixel() -> None:
    from label_studio_sdk.converter.brush import mask2rle

    alpha = np.zeros((6, 9), dtype=np.uint8)
    alpha[1, 2] = 1  # the faintest stroke still marks the pixel
    alpha[4, 7] = 200
    item = brush_item(alpha > 0)
    item["value"]["rle"] = mask2rle(alpha)
    mask = correction_from_event(make_event([item])).mask()
    assert list(zip(*np.nonzero(mask), strict=True)) == [(1, 2), (4, 7)]


def test_empty_brush_stroke_gives_sized_all_good_mask() -> None:
    correction = correction_from_event(make_event([brush_item(np.zeros((8, 5), dtype=bool))]))
    assert correction.has_defect is False
    assert correction.mask_rle == {"counts": [40], "size": [8, 5]}


def test_polygon_rasterises_inside_its_bounds() -> None:
    size = (80, 100)  # (height, width): percent → pixels differs per axis
    square = [[25, 25], [75, 25], [75, 75], [25, 75]]
    mask = correction_from_event(make_event([polygon_item(square, size)])).mask()
    assert mask.shape == size
    ys, xs = np.nonzero(mask)
    # Ideal: columns 25..74, rows 20..59 (50×40 = 2000 px); one pixel of slack on each edge.
    assert 24 <= xs.min() <= 25 and 74 <= xs.max() <= 75
    assert 19 <= ys.min() <= 20 and 59 <= ys.max() <= 60
    assert abs(int(mask.sum()) - 2000) <= 2000 * 0.06
    assert mask[40, 50] and not mask[5, 5] and not mask[75, 95]


def test_polygon_triangle_area_and_orientation() -> None:
    size = (100, 100)
    # Right angle at the top-left: the lower-right half of the box stays empty.
    triangle = [[10, 10], [90, 10], [10, 90]]
    mask = correction_from_event(make_event([polygon_item(triangle, size)])).mask()
    assert abs(int(mask.sum()) - 3200) <= 3200 * 0.06
    assert mask[20, 20] and mask[12, 80] and mask[80, 12]
    assert not mask[80, 80] and not mask[60, 60]


def test_full_image_polygon_covers_every_pixel() -> None:
    size = (30, 40)
    full = [[0, 0], [100, 0], [100, 100], [0, 100]]
    assert correction_from_event(make_event([polygon_item(full, size)])).mask().all()


def test_degenerate_polygon_is_ignored_but_size_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="labelstudio.rasterise"):
        correction = correction_from_event(make_event([polygon_item([[10, 10], [50, 50]], (9, 7))]))
    assert correction.has_defect is False
    assert correction.mask_rle == {"counts": [63], "size": [9, 7]}
    assert "polygon with 2 point(s) ignored" in caplog.text


def test_rectangle_rasterises_to_pixel_centres() -> None:
    size = (100, 200)  # height 100, width 200
    correction = correction_from_event(make_event([rectangle_item(10, 20, 30, 40, size)]))
    expected = np.zeros(size, dtype=bool)
    expected[20:60, 20:80] = True  # x 10%..40% of 200, y 20%..60% of 100
    np.testing.assert_array_equal(correction.mask(), expected)
    assert correction.has_defect is True


def test_rectangle_edge_cases() -> None:
    size = (50, 50)
    sliver = correction_from_event(make_event([rectangle_item(50, 10, 0.1, 20, size)])).mask()
    assert sliver.any(axis=0).sum() == 1  # thinner than a pixel, still one column
    assert sliver.sum() == 10
    clipped = correction_from_event(make_event([rectangle_item(80, 90, 50, 50, size)])).mask()
    assert clipped.sum() == 10 * 5  # cut at the image border
    assert clipped[45:, 40:].all()
    empty = correction_from_event(make_event([rectangle_item(10, 10, 0, 20, size)]))
    assert empty.has_defect is False


def test_rotated_rectangle_is_rasterised_unrotated_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    size = (20, 20)
    with caplog.at_level(logging.WARNING, logger="labelstudio.rasterise"):
        mask = correction_from_event(
            make_event([rectangle_item(25, 25, 50, 50, size, rotation=30)])
        ).mask()
    assert mask.sum() == 100 and mask[5:15, 5:15].all()
    assert "rotation is not supported" in caplog.text


def test_union_of_brush_polygon_and_rectangle() -> None:
    size = (40, 60)
    drawn = np.zeros(size, dtype=bool)
    drawn[2:6, 3:9] = True
    drawn[20:24, 28:34] = True  # overlaps the rectangle below
    box = rectangle_item(40, 50, 20, 25, size, label="Scratch", region_id="r")  # x 24..36, y 20..30
    poly = polygon_item([[80, 70], [95, 70], [95, 95], [80, 95]], size, label="Dent")
    result = [brush_item(drawn), choice_item("Defective"), box, poly]
    correction = correction_from_event(make_event(result))

    separately = [correction_from_event(make_event([item])).mask() for item in (box, poly)]
    expected = drawn | separately[0] | separately[1]
    mask = correction.mask()
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() > max(drawn.sum(), separately[0].sum(), separately[1].sum())
    assert mask.sum() < drawn.sum() + separately[0].sum() + separately[1].sum()  # overlap once
    assert correction.labels == ["Defect", "Defective", "Scratch", "Dent"]
    assert correction.has_defect is True


def test_labels_are_not_repeated() -> None:
    size = (10, 10)
    result = [rectangle_item(0, 0, 20, 20, size), rectangle_item(50, 50, 20, 20, size)]
    assert correction_from_event(make_event(result)).labels == ["Defect"]


def test_regions_on_another_image_tag_are_skipped() -> None:
    size = (10, 10)
    other = rectangle_item(0, 0, 100, 100, (99, 99))
    other["to_name"] = "reference"  # different object tag, different size: not this image
    mine = rectangle_item(0, 0, 50, 50, size)
    correction = correction_from_event(make_event([other, mine]))
    assert correction.mask_rle["size"] == [10, 10]
    assert correction.mask().sum() == 25


def test_annotation_without_regions_is_a_good_sample() -> None:
    correction = correction_from_event(make_event([]))
    assert correction.mask_rle is None
    assert correction.has_defect is False
    assert correction.labels == []
    mask = correction.mask((12, 9))
    assert mask.shape == (12, 9) and not mask.any()
    with pytest.raises(ValueError, match="pass the image shape"):
        correction.mask()


def test_choice_only_annotation_keeps_the_verdict() -> None:
    correction = correction_from_event(make_event([choice_item("Good")]))
    assert correction.labels == ["Good"]
    assert correction.has_defect is False
    assert correction.mask_rle is None


def test_result_null_is_treated_as_empty() -> None:
    event = make_event([])
    event["annotation"]["result"] = None
    assert correction_from_event(event).has_defect is False


def test_skipped_annotation_flags_survive() -> None:
    event = make_event([], was_cancelled=True, ground_truth=True)
    correction = correction_from_event(event)
    assert correction.was_cancelled is True
    assert correction.ground_truth is True


# -- image, category, project, annotator --------------------------------------------------------
def test_image_key_comes_from_the_label_config() -> None:
    config = (
        '<View><Image name="img" value="$photo"/>'
        '<BrushLabels name="tag" toName="img"><Label value="Defect"/></BrushLabels></View>'
    )
    data = {"image": "http://127.0.0.1:8000/decoy.png", "photo": "/data/upload/3/real.png"}
    drawn = blob_mask((10, 12), seed=5)
    event = make_event([brush_item(drawn, to_name="img")], data=data, label_config=config)
    correction = correction_from_event(event)
    assert correction.image == "/data/upload/3/real.png"
    np.testing.assert_array_equal(correction.mask(), drawn)
    # A region aimed at "image" is not on this config's image tag "img".
    stray = make_event([brush_item(drawn, to_name="image")], data=data, label_config=config)
    assert correction_from_event(stray).mask_rle is None


def test_image_key_named_by_config_but_missing_from_data() -> None:
    event = make_event([], data={"picture": IMAGE_URL, "category": "bottle"})
    with pytest.raises(ValueError, match="annotation 101: no image reference found in task 11"):
        correction_from_event(event)


def test_without_a_config_the_first_image_like_value_is_used() -> None:
    event = make_event([], data={"category": "bottle", "note": "hi", "img": "s3://bkt/x.JPG"})
    del event["project"]["label_config"]
    assert correction_from_event(event).image == "s3://bkt/x.JPG"
    event = make_event([], data={"category": "bottle", "file": "/data/upload/1/a.png"})
    event["project"] = 3  # a bare id: no config to read
    assert correction_from_event(event).image == "/data/upload/1/a.png"


def test_unreadable_config_falls_back_to_guessing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="labelstudio.label_config"):
        event = make_event([], label_config="<View><Image name=", data={"pic": "x/y.png"})
        assert correction_from_event(event).image == "x/y.png"
    assert "label config unreadable" in caplog.text


def test_category_from_custom_key_and_default() -> None:
    data = {"image": IMAGE_URL, "category": "bottle", "product": "cable"}
    assert correction_from_event(make_event([], data=data), category_key="product").category == (
        "cable"
    )
    no_category = {"image": IMAGE_URL, "category": ""}
    assert correction_from_event(make_event([], data=no_category)).category is None
    defaulted = correction_from_event(make_event([], data=no_category), default_category="screw")
    assert defaulted.category == "screw"
    numeric = {"image": IMAGE_URL, "category": 5}
    assert correction_from_event(make_event([], data=numeric)).category == "5"


@pytest.mark.parametrize(
    "project, expected",
    [
        ("3.1699999", "3"),  # Label Studio's "<id>.<created timestamp>" form
        ("3.1717241234.5678", "3"),
        (3, "3"),
        ("12", "12"),
        ({"id": 12, "title": "x"}, "12"),
        ({"id": "12.1699"}, "12"),
    ],
)
def test_project_id_forms(project: object, expected: str) -> None:
    event = make_event([])
    event["project"] = project
    assert correction_from_event(event).project == expected


def test_project_falls_back_to_annotation_then_task() -> None:
    event = make_event([], project_id=5)
    event["project"] = None
    assert correction_from_event(event).project == "5"
    event["annotation"]["project"] = None
    event["task"]["project"] = "6.1700000000"
    assert correction_from_event(event).project == "6"
    event["task"]["project"] = ""
    with pytest.raises(ValueError, match="annotation 101: event names no project"):
        correction_from_event(event)


def test_task_may_be_embedded_in_the_annotation() -> None:
    event = make_event([])
    task = event.pop("task")
    event["annotation"]["task"] = task
    correction = correction_from_event(event)
    assert correction.task_id == 11
    assert correction.image == IMAGE_URL


def test_task_id_may_come_from_annotation_task_field() -> None:
    event = make_event([], task_id=11)
    del event["task"]["id"]
    assert correction_from_event(event).task_id == 11


@pytest.mark.parametrize(
    "completed_by, expected",
    [(1, 1), ({"id": 4, "email": "a@b.c"}, 4), ({"email": "a@b.c"}, "a@b.c"), (True, None)],
)
def test_annotator_forms(completed_by: object, expected: object) -> None:
    assert correction_from_event(make_event([], completed_by=completed_by)).annotator == expected


# -- errors -------------------------------------------------------------------------------------
def _without(path: str) -> dict:
    event = make_event([rectangle_item(0, 0, 10, 10, (10, 10))])
    *parents, leaf = path.split(".")
    node = event
    for part in parents:
        node = node[part]
    del node[leaf]
    return event


@pytest.mark.parametrize(
    "event, message",
    [
        ([], "event must be a JSON object, got list"),
        ({"action": "ANNOTATION_CREATED"}, "event has no 'annotation' object"),
        (_without("annotation.id"), "missing annotation id"),
        (make_event([], annotation_id="abc"), "annotation id must be an integer, got 'abc'"),
        (make_event([], annotation_id=True), "missing annotation id"),
        (_without("task"), "annotation 101: event has no 'task' object"),
        (_without("task.data"), "annotation 101: task 11 has no 'data' object"),
    ],
)
def test_structural_errors_say_what_is_missing(event: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        correction_from_event(event)


def test_missing_task_id_is_reported() -> None:
    event = make_event([])
    del event["task"]["id"]
    del event["annotation"]["task"]
    with pytest.raises(ValueError, match="missing task id"):
        correction_from_event(event)


def test_result_must_be_a_list_of_objects() -> None:
    event = make_event([])
    event["annotation"]["result"] = {"type": "brushlabels"}
    with pytest.raises(ValueError, match="annotation 101: 'result' must be a list"):
        correction_from_event(event)
    event["annotation"]["result"] = ["brush"]
    with pytest.raises(ValueError, match="annotation 101: result items must be objects"):
        correction_from_event(event)


def test_inconsistent_image_sizes_are_rejected() -> None:
    result = [
        rectangle_item(0, 0, 10, 10, (40, 60)),
        polygon_item([[0, 0], [5, 0], [5, 5]], (60, 40)),
    ]
    with pytest.raises(
        ValueError,
        match=r"annotation 101: result items disagree on the image size: \(40, 60\) vs \(60, 40\)",
    ):
        correction_from_event(make_event(result))


def test_brush_whose_rle_does_not_fit_the_size_is_rejected() -> None:
    item = brush_item(np.ones((10, 10), dtype=bool))
    item["original_width"] = 20
    with pytest.raises(ValueError, match="annotation 101: brush RLE holds 400 values"):
        correction_from_event(make_event([item]))


def test_truncated_brush_rle_is_rejected() -> None:
    item = brush_item(blob_mask((30, 30)))
    item["value"]["rle"] = item["value"]["rle"][:5]
    with pytest.raises(ValueError, match="annotation 101: brush RLE"):
        correction_from_event(make_event([item]))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda i: i.pop("original_width"), "brushlabels item without original_width"),
        (lambda i: i.update(original_height=0), r"image size must be positive, got \(0, 10\)"),
        (lambda i: i.update(original_height="ten"), "original_height must be an integer"),
        (lambda i: i["value"].pop("rle"), "brush item without an 'rle' list"),
        (lambda i: i["value"].update(rle=[]), "brush item without an 'rle' list"),
    ],
)
def test_bad_brush_items(mutate, message: str) -> None:
    item = brush_item(np.ones((10, 10), dtype=bool))
    mutate(item)
    with pytest.raises(ValueError, match=message):
        correction_from_event(make_event([item]))


def test_bad_polygon_and_rectangle_values() -> None:
    polygon = polygon_item([[0, 0], [5, "x"], [5, 5]], (10, 10))
    with pytest.raises(ValueError, match="polygon points must be"):
        correction_from_event(make_event([polygon]))
    polygon["value"]["points"] = None
    with pytest.raises(ValueError, match="polygon item without a 'points' list"):
        correction_from_event(make_event([polygon]))
    rectangle = rectangle_item(0, 0, 10, 10, (10, 10))
    del rectangle["value"]["width"]
    with pytest.raises(ValueError, match="rectangle needs numeric x, y, width, height"):
        correction_from_event(make_event([rectangle]))
