"""``python -m backend.prelabel``: pre-label a whole folder, dataset or project in one batch.

The interactive backend predicts a task when Label Studio asks; this predicts thousands up
front, writes a Label Studio import file (or adds predictions to a project), survives being
stopped (a rerun resumes), and can fan out over rq workers. Output items come from the label
config exactly as the backend makes them (``parse_label_config`` + ``to_results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from backend.prelabel_core import (
    Item,
    ProgressLog,
    Records,
    UsageError,
    bind_items,
    dataset_items,
    fetch_settings,
    load_ahead,
    predict_chunk,
    project_items,
    run_on_workers,
    write_tasks_atomic,
)
from clipsam.logging_setup import configure_logging, log_level
from correction_loop import keys
from labelstudio.fetch import ImageFetcher
from labelstudio.label_config import LabelConfigError, LabelSpec, parse_label_config
from labelstudio.settings import FetchSettings, api_key_from_env

logger = logging.getLogger("backend.prelabel")

PROG = "python -m backend.prelabel"
DEFAULT_LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="defect" toName="image">
    <Label value="Defect" background="red"/>
  </BrushLabels>
  <Choices name="verdict" toName="image">
    <Choice value="Good"/>
    <Choice value="Defective"/>
  </Choices>
</View>
"""
EPILOG = """examples:
  %(prog)s --folder photos/ --category bottle --out tasks.json
  %(prog)s --data mvtec:/data/mvtec --url-prefix '/data/local-files/?d=mvtec/' \\
      --preset fast --head runs/mvtec/head.safetensors --out mvtec.json
  %(prog)s --project 3 --label-studio-url http://localhost:8080 --api-key TOKEN --push
  REDIS_URL=redis://redis:6379/0 %(prog)s --worker    # on each GPU machine, then:
  REDIS_URL=redis://redis:6379/0 %(prog)s --folder /shared/imgs --workers 4 --out t.json

Stopped runs resume: finished items are kept in OUT.progress.jsonl (delete it, or pass
--fresh, to start over); adding images and rerunning predicts only the new ones.
Exit status: 0 done, 1 some images failed (listed; the rest are written), 2 bad input,
130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pre-label images for Label Studio with ClipSAM: write an import file "
        "with predictions (--out), or add predictions to a project (--push).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("source (give one)")
    src.add_argument("--folder", type=Path, metavar="PATH", help="images under PATH, recursive")
    src.add_argument("--data", metavar="SCHEME:PATH", help="mvtec:PATH, visa:PATH or meta:PATH")
    src.add_argument("--project", type=int, metavar="ID", help="a Label Studio project's tasks")
    src.add_argument(
        "--label-studio-url", default=env("LABEL_STUDIO_URL"), metavar="URL",
        help="Label Studio of --project (default: $LABEL_STUDIO_URL)",
    )  # fmt: skip
    src.add_argument(
        "--api-key", default=env("LABEL_STUDIO_API_KEY"), metavar="KEY",
        help="its legacy token or personal access token (default: $LABEL_STUDIO_API_KEY)",
    )  # fmt: skip
    src.add_argument(
        "--split", default="test", metavar="NAME", help="dataset split (default: test)"
    )
    src.add_argument(
        "--categories", metavar="A,B", help="dataset classes, comma-separated (default: all)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="FILE", help="Label Studio import file (JSON)")
    out.add_argument(
        "--push", action="store_true",
        help="create the predictions in the --project's tasks (then --out is optional)",
    )  # fmt: skip
    out.add_argument(
        "--url-prefix", metavar="PREFIX",
        help="task image = PREFIX + path relative to the source, e.g. '/data/local-files/?d=' "
        "or 'https://host/images/' (default: the absolute path)",
    )  # fmt: skip
    out.add_argument("--fresh", action="store_true", help="discard earlier progress, start over")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    lab = parser.add_argument_group("labels")
    lab.add_argument(
        "--label-config", type=Path, metavar="FILE",
        help="label config XML (default: the project's; else BrushLabels + Choices, as in the "
        "README)",
    )  # fmt: skip
    lab.add_argument(
        "--defect-label", default=env("CLIPSAM_DEFECT_LABEL"), metavar="LABEL",
        help="the config label meaning defect (default: $CLIPSAM_DEFECT_LABEL, else the first)",
    )  # fmt: skip
    lab.add_argument(
        "--verdict-threshold", type=float, metavar="T",
        default=env("CLIPSAM_VERDICT_THRESHOLD") or "0.5",
        help="image score from which Choices says defective (default: 0.5)",
    )  # fmt: skip
    lab.add_argument(
        "--category",
        metavar="NAME",
        help="prompt category of images without one (folder images, tasks without the field)",
    )
    lab.add_argument(
        "--category-key", default=env("CLIPSAM_CATEGORY_KEY") or "category", metavar="KEY",
        help="task data field of the category (default: category)",
    )  # fmt: skip
    mod = parser.add_argument_group("model")
    mod.add_argument(
        "--preset", default=env("CLIPSAM_PRESET") or "fast", metavar="NAME",
        help="paper, fast or tiny (default: $CLIPSAM_PRESET, else fast)",
    )  # fmt: skip
    mod.add_argument(
        "--head", type=Path, default=env("CLIPSAM_HEAD"), metavar="FILE",
        help="head file (default: $CLIPSAM_HEAD, else the training-free head)",
    )  # fmt: skip
    mod.add_argument(
        "--config", default=env("CLIPSAM_CONFIG"), metavar="JSON",
        help="pipeline overrides, e.g. '{\"tau\": 0.4}' (default: $CLIPSAM_CONFIG)",
    )  # fmt: skip
    mod.add_argument(
        "--device", default=env("CLIPSAM_DEVICE") or "auto", metavar="DEV", help="auto, cpu, cuda"
    )
    mod.add_argument(
        "--model-dir", type=Path, default=Path(env("MODEL_DIR") or "model_dir"), metavar="DIR",
        help="feature cache and embedded Redis live here (default: $MODEL_DIR, else model_dir)",
    )  # fmt: skip
    mod.add_argument(
        "--cache-dir", type=Path, metavar="DIR",
        help="on-disk feature cache (default: MODEL_DIR/features)",
    )  # fmt: skip
    scale = parser.add_argument_group("scale out")
    scale.add_argument(
        "--chunk-size", type=int, default=8, metavar="N", help="images per batch and rq job (8)"
    )
    scale.add_argument(
        "--workers", type=int, metavar="N",
        help="fan out over N rq workers (queue clipsam-prelabel; start them with --worker). "
        "They read the same paths/URLs and take LABEL_STUDIO_API_KEY from their environment",
    )  # fmt: skip
    scale.add_argument(
        "--redis-url", default=env("REDIS_URL"), metavar="URL",
        help="Redis of --workers/--worker (default: $REDIS_URL, else embedded under MODEL_DIR)",
    )  # fmt: skip
    scale.add_argument("--worker", action="store_true", help="be an rq worker for such runs")
    scale.add_argument("--burst", action="store_true", help="--worker: quit when queue is empty")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(log_level(default="WARNING"))  # LOG_LEVEL, LOG_FORMAT=json
    if threading.current_thread() is threading.main_thread() and not args.worker:
        signal.signal(signal.SIGTERM, _interrupt)  # docker stop: stop as cleanly as on Ctrl-C
    try:
        if args.worker:
            from correction_loop.worker import run_worker

            return run_worker([keys.PRELABEL_QUEUE], args.redis_url, args.model_dir, args.burst)
        return run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Predict every item not yet in the progress file, then write the import file from it."""
    _check(args)
    label_config, items, client = open_source(args)
    try:
        spec = parse_label_config(label_config, args.defect_label or None)
    except LabelConfigError as exc:
        raise UsageError(str(exc)) from None
    bind_items(items, spec, args.category_key, args.category)
    overrides, fingerprint = _model(args, label_config)
    options = {"preset": args.preset, "overrides": overrides, "label_config": label_config,
               "defect_label": args.defect_label or None,
               "verdict_threshold": args.verdict_threshold,
               "fetch": _fetch_values(args)}  # fmt: skip
    progress_path = _progress_path(args)
    progress = ProgressLog(progress_path, fingerprint, fresh=args.fresh)
    chunks = list(_chunks(items, args.chunk_size, set(progress.done)))
    by_key = {item.key: item for item in items}
    failures: dict[str, str] = {}
    bar = tqdm(total=len(items), initial=len(items) - sum(map(len, chunks)), unit="img",
               desc="prelabel", disable=args.quiet, file=sys.stderr)  # fmt: skip

    def finish(records: Records) -> None:
        done = [r for r in records if "prediction" in r]
        if args.push:  # before the progress line: a crash in between re-pushes, never loses
            for record in done:
                client.predictions.create(task=by_key[record["key"]].task_id,
                                          **record["prediction"])  # fmt: skip
        progress.append(done)
        for record in records:
            if "error" in record:
                failures[record["key"]] = record["error"]
                logger.warning("%s: no prediction: %s", record["key"], record["error"])
        bar.update(len(records))

    try:
        if chunks and args.workers:
            run_on_workers(chunks, options, args.workers, args.redis_url, args.model_dir, finish)
        elif chunks:
            _run_in_process(chunks, options, spec, args.api_key, finish)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_done(items, progress.done)} of {len(items)} done, kept in "
              f"{progress_path}; rerun the same command to resume", file=sys.stderr)  # fmt: skip
        return 130
    except UsageError:
        raise
    except Exception as exc:  # a worker or Label Studio failed: what is done stays done
        logger.debug("run failed", exc_info=True)
        print(f"{PROG}: failed: {type(exc).__name__}: {exc}\n{_done(items, progress.done)} of "
              f"{len(items)} done, kept in {progress_path}; rerun to resume",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        bar.close()
        progress.close()
    return _report(args, items, progress.done, failures)


def _check(args: argparse.Namespace) -> None:
    sources = [name for name in ("folder", "data", "project") if getattr(args, name) is not None]
    if len(sources) != 1:
        raise UsageError("give exactly one source: --folder PATH, --data SCHEME:PATH or "
                         f"--project ID (got {len(sources)}); see --help")  # fmt: skip
    if args.push and args.project is None:
        raise UsageError("--push adds predictions to a project: it needs --project ID")
    if args.out is None and not args.push:
        raise UsageError("say where the predictions go: --out FILE (or --project ID --push)")
    if args.out is not None and args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name such as tasks.json")
    if args.url_prefix is not None and args.project is not None:
        raise UsageError("--url-prefix is for --folder/--data; project tasks keep their data")
    if args.chunk_size < 1 or (args.workers is not None and args.workers < 1):
        raise UsageError("--chunk-size and --workers must be at least 1")
    if not 0.0 <= args.verdict_threshold <= 1.0:
        raise UsageError(f"--verdict-threshold must be in [0, 1], got {args.verdict_threshold}")


def open_source(args: argparse.Namespace) -> tuple[str, list[Item], Any]:
    """The label config, the items in a stable order, and the Label Studio client (projects)."""
    config = None
    if args.label_config is not None:
        try:
            config = args.label_config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --label-config {args.label_config}: {exc}") from None
    if args.project is not None:
        project_config, items, client = project_items(
            args.project, args.label_studio_url, args.api_key
        )
        return config or project_config, items, client
    if args.folder is not None:
        categories = [args.category] if args.category else None
        items = dataset_items(f"folder:{args.folder}", args.split, categories, args.url_prefix)
    else:
        categories = args.categories.split(",") if args.categories else None
        items = dataset_items(args.data, args.split, categories, args.url_prefix)
    return config or DEFAULT_LABEL_CONFIG, items, None


def _model(args: argparse.Namespace, label_config: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pipeline overrides, and the fingerprint a progress file must match to be resumed."""
    from clipsam.config import overrides_from_json, resolve_config
    from clipsam.heads import read_head_metadata

    try:
        overrides = overrides_from_json(args.config, "--config") if args.config else {}
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.head is not None:
        overrides["head_path"] = str(args.head)
    overrides.setdefault("device", args.device)
    overrides.setdefault("cache_dir", str(args.cache_dir or args.model_dir / "features"))
    try:
        resolve_config(args.preset, **overrides)
        head = overrides.get("head_path")
        head_version = read_head_metadata(head)["version"] if head else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ignored = ("head_path", "device", "cache_dir", "cache_items", "cache_disk_gb")
    fingerprint = {
        "preset": args.preset,
        "head": head_version,
        "overrides": {k: v for k, v in sorted(overrides.items()) if k not in ignored},
        "label_config_sha256": hashlib.sha256(label_config.encode()).hexdigest(),
        "defect_label": args.defect_label or None,
        "verdict_threshold": args.verdict_threshold,
    }
    return overrides, json.loads(json.dumps(fingerprint))


def _progress_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out.with_name(args.out.name + ".progress.jsonl")
    return args.model_dir / "prelabel" / f"project-{args.project}.progress.jsonl"


def _fetch_values(args: argparse.Namespace) -> dict[str, Any]:
    """What a worker needs to fetch like this run would (never the API key)."""
    try:
        settings = FetchSettings.from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    url = (args.label_studio_url or "").rstrip("/") or None
    return dataclasses.replace(settings, label_studio_url=url).to_job()


def _chunks(items: list[Item], size: int, done: set[str]) -> Iterator[list[Item]]:
    """Fixed boundaries over all items (a resumed run batches as the first run did)."""
    for start in range(0, len(items), size):
        chunk = [item for item in items[start : start + size] if item.key not in done]
        if chunk:
            yield chunk


def _run_in_process(
    chunks: list[list[Item]], options: dict[str, Any], spec: LabelSpec, api_key: str | None,
    finish: Callable[[Records], None],
) -> None:  # fmt: skip
    from clipsam import WeightPaths, load_pipeline

    try:
        pipeline = load_pipeline(
            options["preset"], weight_paths=WeightPaths.from_env(), **options["overrides"]
        )
    except (ValueError, OSError) as exc:
        raise UsageError(f"could not load the model: {exc}") from None
    settings = fetch_settings(options["fetch"])
    key = api_key if api_key is not None else api_key_from_env()
    loaders = max(1, settings.threads)
    with (
        ImageFetcher(settings, key) as fetcher,
        ThreadPoolExecutor(loaders, thread_name_prefix="prelabel-ahead") as pool,
    ):
        jobs = ([item.job() for item in chunk] for chunk in chunks)
        threshold, preset = options["verdict_threshold"], options["preset"]
        for items, images in load_ahead(jobs, fetcher, settings, pool):
            finish(
                predict_chunk(pipeline, fetcher, settings, spec, items, threshold, preset, images)
            )


def _report(
    args: argparse.Namespace, items: list[Item], done: dict[str, Any], failures: dict[str, str]
) -> int:
    if args.out is not None:
        tasks = []
        for item in items:
            task: dict[str, Any] = {"data": item.data}
            if item.key in done:
                task["predictions"] = [done[item.key]]
            tasks.append(task)
        write_tasks_atomic(args.out, tasks)
    where = f"project {args.project}" if args.push else str(args.out)
    print(f"{_done(items, done)} of {len(items)} images pre-labelled "
          f"-> {where}", file=sys.stderr)  # fmt: skip
    if failures:
        shown = "\n".join(f"  {key}: {why}" for key, why in list(failures.items())[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        print(f"{len(failures)} image(s) failed (a rerun retries them):\n{shown}{more}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _done(items: list[Item], done: dict[str, Any]) -> int:
    return sum(item.key in done for item in items)


if __name__ == "__main__":
    raise SystemExit(main())
