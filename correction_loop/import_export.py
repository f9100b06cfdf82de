"""Seed the corrections store from a Label Studio JSON export.

Projects annotated before this backend was connected (or while its webhook was down) hold
corrections no webhook ever delivered; an export brings them in. Each annotation goes through
the same :func:`~correction_loop.corrections.correction_from_event` as a webhook event, and
upserts are idempotent, so importing the same export again changes nothing.

    python -m training.import_export EXPORT.json --project 3 [--label-config config.xml]
                                     [--redis-url redis://...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipsam.logging_setup import configure_logging
from correction_loop import keys
from correction_loop.corrections import Correction, correction_from_event
from correction_loop.store import CorrectionStore

logger = logging.getLogger(__name__)


def read_export(
    path: Path,
    project: str,
    label_config: str | None = None,
    category_key: str = "category",
    default_category: str | None = None,
) -> list[Correction]:
    """Every annotation of a JSON export as a :class:`Correction`; ValueError names the culprit.

    All of it is parsed before anything is stored, so a bad export leaves the store untouched.
    """
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    return corrections_from_tasks(
        tasks, project, label_config, category_key, default_category, source=str(path)
    )


def corrections_from_tasks(
    tasks: Any,
    project: str,
    label_config: str | None = None,
    category_key: str = "category",
    default_category: str | None = None,
    source: str = "tasks",
) -> list[Correction]:
    """Corrections from exported tasks (``{"data", "annotations": [...]}``), as in an export or
    Label Studio's legacy ``/train`` request."""
    if isinstance(tasks, dict):  # a single task exported on its own
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise ValueError(f"{source}: expected Label Studio's JSON export (a list of tasks)")
    project_info: dict[str, Any] = {"id": project, "label_config": label_config}
    corrections = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or "data" not in task:
            # JSON-MIN flattens each annotation into one record: data keys, "annotation_id", ...
            hint = (
                " (this looks like a JSON-MIN export; use the JSON export)"
                if isinstance(task, dict) and "annotation_id" in task
                else ""
            )
            raise ValueError(f"{source}: item {index} is not a task with 'data'{hint}")
        annotations = task.get("annotations")
        if annotations is None:
            raise ValueError(
                f"{source}: task {task.get('id')} has no 'annotations' "
                "(use the JSON export, not JSON-MIN)"
            )
        for annotation in annotations:
            if not isinstance(annotation, dict):
                raise ValueError(f"{source}: task {task.get('id')} holds a non-object annotation")
            event = {
                "action": "ANNOTATION_CREATED",
                "annotation": {**annotation, "task": task.get("id")},
                "task": task,
                "project": project_info,
            }
            try:
                corrections.append(correction_from_event(event, category_key, default_category))
            except ValueError as exc:
                raise ValueError(f"{source}: task {task.get('id')}: {exc}") from exc
    return corrections


def import_export(
    path: Path,
    store: CorrectionStore,
    project: str,
    label_config: str | None = None,
    category_key: str = "category",
    default_category: str | None = None,
) -> int:
    """Upsert every annotation of the export at ``path``; returns how many were new or changed."""
    project = str(project).split(".", 1)[0]
    corrections = read_export(path, project, label_config, category_key, default_category)
    new = store.upsert_many(corrections)
    logger.info(
        "imported %s into project %s: %d annotation(s), %d new or changed",
        path, project, len(corrections), new,
    )  # fmt: skip
    return new


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.import_export",
        description=(
            "Import the annotations of a Label Studio JSON export (Export → JSON) into the "
            "corrections store, as if each had arrived by webhook. Safe to repeat."
        ),
    )
    parser.add_argument("export", type=Path, help="the export file (a JSON list of tasks)")
    parser.add_argument("--project", required=True, help="Label Studio project id, e.g. 3")
    parser.add_argument(
        "--label-config",
        type=Path,
        help="the project's label config XML (names the image key); "
        "without it the first image-like value of each task's data is used",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="Redis holding the corrections (default: $REDIS_URL, else the embedded store "
        "MODEL_DIR/redis/clipsam.rdb)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("MODEL_DIR") or "model_dir"),
        help="where the embedded store lives (default: $MODEL_DIR or ./model_dir)",
    )
    parser.add_argument("--category-key", default="category", help="task data key of the category")
    parser.add_argument("--default-category", help="category when a task's data has none")
    parser.add_argument(
        "--prefix", default=keys.PREFIX, help=f"Redis key prefix (default: {keys.PREFIX})"
    )
    args = parser.parse_args(argv)
    configure_logging()

    label_config = None
    if args.label_config is not None:
        try:
            label_config = args.label_config.read_text(encoding="utf-8")
        except OSError as exc:
            parser.error(f"cannot read --label-config: {exc}")
    if not args.export.is_file():
        parser.error(f"no export file at {args.export}")

    from correction_loop.redis_conn import connect

    store = CorrectionStore(connect(args.redis_url, args.model_dir), prefix=args.prefix)
    try:
        corrections = read_export(
            args.export, args.project, label_config, args.category_key, args.default_category
        )
    except ValueError as exc:
        logger.error("%s", exc)
        return 1
    project = str(args.project).split(".", 1)[0]
    new = store.upsert_many(corrections)
    logger.info("project %s now holds %d correction(s)", project, len(store.list_project(project)))
    print(
        f"{args.export}: {len(corrections)} annotation(s), {new} new or changed, "
        f"{len(corrections) - new} unchanged (project {project}, "
        f"{store.pending(project)} pending for retraining)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
