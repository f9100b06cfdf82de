"""The work behind ``python -m backend.prelabel``: sources, chunks, rq fan-out, progress.

:func:`predict_chunk` turns one chunk of images into Label Studio predictions. The CLI runs it
in-process, or rq workers run it through :func:`predict_job`; both see the same chunk
boundaries, so the output does not depend on where a chunk ran. :class:`ProgressLog` is the
resumable record of finished items.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from clipsam.atomic import atomic_path, fsync_path
from clipsam.images import load_image
from correction_loop import keys
from labelstudio.fetch import ImageFetcher
from labelstudio.label_config import LabelSpec, parse_label_config
from labelstudio.predictions import ImageTask, load_task, predict_images
from labelstudio.settings import FetchSettings, api_key_from_env

if TYPE_CHECKING:  # torch and the backbones load when there is work, not for --help
    from clipsam import Pipeline

logger = logging.getLogger(__name__)

PROGRESS_FORMAT = "clipsam-prelabel-progress/1"
JOB_TIMEOUT = 3600  # seconds for one chunk on one worker
RESULT_TTL = 24 * 3600
NO_WORKER_HINT = 60.0  # seconds a chunk may wait, with no worker listening, before a hint

Records = list[dict[str, Any]]


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class ProgressMismatch(UsageError):
    """A progress file was written by a run with another model, config or label config."""


@dataclass
class Item:
    """One image to pre-label; ``key`` names it in the progress file."""

    key: str
    data: dict[str, Any] = field(default_factory=dict)  # the task data written out
    path: str | None = None  # a local file (folder and dataset sources)
    ref: str | None = None  # what the task data points at
    task_id: int | None = None  # project sources
    category: str | None = None
    missing: str = ""

    def job(self) -> dict[str, Any]:
        ref = self.ref if self.task_id is not None else None  # local files are read from disk
        return {"key": self.key, "path": self.path, "ref": ref, "task_id": self.task_id,
                "category": self.category, "missing": self.missing}  # fmt: skip


# -- sources -------------------------------------------------------------------------------


def dataset_items(spec: str, split: str, categories: list[str] | None, prefix: str | None
                  ) -> list[Item]:  # fmt: skip
    """Images of ``folder:``/``mvtec:``/``visa:``/``meta:`` in the reader's stable order."""
    from clipsam.data import DatasetError, open_dataset

    try:
        samples = open_dataset(spec, split=split, categories=categories)
    except (DatasetError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if not samples:
        raise UsageError(f"no images found in {spec}")
    path = Path(spec.partition(":")[2].strip()).expanduser()
    base = (path if path.is_dir() else path.parent).resolve()
    items = []
    for sample in samples:
        image = sample.image_path.resolve()
        items.append(Item(str(image), path=str(image), ref=_reference(image, base, prefix),
                          category=sample.category or None))  # fmt: skip
    return items


def _reference(image: Path, base: Path, prefix: str | None) -> str:
    if prefix is None:
        return str(image)
    if not image.is_relative_to(base):
        raise UsageError(f"{image} is outside {base}: --url-prefix needs images under the source")
    return prefix + quote(image.relative_to(base).as_posix())


def project_items(
    project: int, url: str | None, api_key: str | None
) -> tuple[str, list[Item], Any]:
    """A project's label config, its tasks (by id) and the SDK client that read them."""
    import httpx
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    if not url or not api_key:
        raise UsageError("--project needs --label-studio-url and --api-key "
                         "(or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")  # fmt: skip
    client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=120.0)
    try:
        config = client.projects.get(id=project).label_config or ""
        pages: Any = client.tasks.list(project=project, fields="task_only", page_size=500)
        tasks: list[Any] = sorted(pages, key=lambda task: task.id)
    except ApiError as exc:
        raise UsageError(f"Label Studio at {url} answered {exc.status_code} for project "
                         f"{project}: {str(exc.body)[:200]}") from None  # fmt: skip
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach Label Studio at {url}: {exc}") from None
    if not tasks:
        raise UsageError(f"project {project} has no tasks")
    items = [Item(f"task:{task.id}", data=dict(task.data or {}), task_id=task.id)
             for task in tasks]  # fmt: skip
    return config, items, client


def bind_items(items: list[Item], spec: LabelSpec, category_key: str, category: str | None
               ) -> None:  # fmt: skip
    """Task data under the config's image key; for project tasks, the reference to fetch."""
    for item in items:
        if item.task_id is None:
            item.data = {spec.data_key: item.ref}
            if item.category:
                item.data[category_key] = item.category
            continue
        ref = item.data.get(spec.data_key)
        item.ref = ref if isinstance(ref, str) and ref else None
        item.missing = f"task data has no image under {spec.data_key!r}"
        value = item.data.get(category_key)
        item.category = str(value) if value not in (None, "") else category


# -- prediction ----------------------------------------------------------------------------


def predict_chunk(
    pipeline: Pipeline, fetcher: ImageFetcher, settings: FetchSettings, spec: LabelSpec,
    items: list[dict[str, Any]], verdict_threshold: float, preset: str,
    images: list[ImageTask] | None = None,
) -> Records:  # fmt: skip
    """One record per item, in order: ``{"key", "prediction"}`` or ``{"key", "error"}``.

    Items (:meth:`Item.job`) name a local file or a task-data reference, fetched like the
    backend fetches it (:func:`labelstudio.predictions.predict_images`, the path /predict
    takes too); a broken image fails only its own item. ``images``: the items' tasks from
    :func:`chunk_tasks`, perhaps loaded already (:func:`load_ahead`); made here when None.
    """
    images = chunk_tasks(fetcher, settings, items) if images is None else images
    threads = max(1, min(len(items), settings.threads))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prelabel-fetch") as pool:
        outcomes = predict_images(pipeline, images, spec, verdict_threshold, preset, pool)
    return [
        {"key": item["key"], "error": image.error}
        if outcome is None
        else {"key": item["key"], "prediction": outcome[1]}
        for item, image, outcome in zip(items, images, outcomes, strict=True)
    ]


def chunk_tasks(
    fetcher: ImageFetcher, settings: FetchSettings, items: list[dict[str, Any]]
) -> list[ImageTask]:
    """The chunk's images to load, not loaded yet."""
    return [_image(item, fetcher, settings) for item in items]


def load_ahead(
    chunks: Iterable[list[dict[str, Any]]], fetcher: ImageFetcher, settings: FetchSettings,
    pool: Executor,
) -> Iterator[tuple[list[dict[str, Any]], list[ImageTask]]]:  # fmt: skip
    """Each chunk's items with their tasks, the *next* chunk's images already loading in
    ``pool`` while the caller predicts this one: fetching and decoding overlap the model's
    compute, and at most two chunks of images are held at once."""
    ahead: deque[tuple[list[dict[str, Any]], list[ImageTask], list[Future[None]]]] = deque()
    for items in chunks:
        tasks = chunk_tasks(fetcher, settings, items)
        ahead.append((items, tasks, [pool.submit(load_task, task) for task in tasks]))
        if len(ahead) == 2:
            yield _loaded(ahead.popleft())
    while ahead:
        yield _loaded(ahead.popleft())


def _loaded(
    entry: tuple[list[dict[str, Any]], list[ImageTask], list[Future[None]]],
) -> tuple[list[dict[str, Any]], list[ImageTask]]:
    items, tasks, futures = entry
    for future in futures:
        future.result()  # load_task never raises for a bad image: it sets task.error
    return items, tasks


def _image(item: dict[str, Any], fetcher: ImageFetcher, settings: FetchSettings) -> ImageTask:
    """A local file (read from disk) or a task-data reference (fetched), and the category."""
    category = item.get("category") or None
    if item.get("path"):
        path, limit = Path(item["path"]), settings.max_image_pixels
        return ImageTask(category, lambda: load_image(path, max_pixels=limit))
    if not item.get("ref"):
        return ImageTask(category, error=item.get("missing") or "no image reference")
    return ImageTask(category, functools.partial(fetcher.fetch, item["ref"], item.get("task_id")))


def predict_job(items: list[dict[str, Any]], options: dict[str, Any]) -> Records:
    """rq entry point (queue ``clipsam-prelabel``): predict one chunk with this worker's model."""
    from clipsam.pipeline_cache import shared_pipeline

    pipeline = shared_pipeline(options["preset"], options["overrides"])  # warm between jobs
    spec = parse_label_config(options["label_config"], options.get("defect_label"))
    settings = fetch_settings(options.get("fetch") or {})
    with ImageFetcher(settings, api_key_from_env()) as fetcher:
        return predict_chunk(pipeline, fetcher, settings, spec, items,
                             options["verdict_threshold"], options["preset"])  # fmt: skip


def fetch_settings(values: dict[str, Any]) -> FetchSettings:
    """This environment's fetch settings with the run's on top (:meth:`FetchSettings.to_job`).
    The API key is never among them: rq keeps job arguments in Redis."""
    return FetchSettings.from_job(values, FetchSettings.from_env())


# -- rq fan-out ----------------------------------------------------------------------------


def run_on_workers(
    chunks: list[list[Item]], options: dict[str, Any], workers: int, redis_url: str | None,
    model_dir: Path, finish: Callable[[Records], None],
) -> None:  # fmt: skip
    """Enqueue chunks (2 per worker ahead), hand results to ``finish`` in chunk order."""
    import redis
    from rq import Queue, Worker

    from correction_loop.redis_conn import connect, release

    try:
        connection = connect(redis_url, model_dir)
        connection.ping()
    except redis.exceptions.RedisError as exc:
        raise UsageError(f"cannot reach Redis ({redis_url or 'embedded'}): {exc}") from None
    queue = Queue(keys.PRELABEL_QUEUE, connection=connection)
    pending: deque = deque()
    todo = iter(chunks)
    try:
        while True:
            while len(pending) < 2 * workers and (chunk := next(todo, None)) is not None:
                pending.append(queue.enqueue_call(
                    predict_job, kwargs={"items": [i.job() for i in chunk], "options": options},
                    timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL,
                    description=f"prelabel {len(chunk)} images",
                ))  # fmt: skip
            if not pending:
                return
            records = _collect(pending[0], lambda: Worker.count(queue=queue))
            _take_back(queue, pending.popleft())
            finish(records)
    finally:
        for job in pending:  # stopped early: take back what no worker should start now
            with contextlib.suppress(Exception):
                _take_back(queue, job)
        release(connection)


def _take_back(queue: Any, job: Any, timeout: float = 30.0) -> None:
    """Delete ``job`` without leaving it in a registry.

    If it is still in the queue, taking it out means no worker will run it. Otherwise a worker
    holds it (maybe not yet marked started): wait until that worker has filed it as finished or
    failed, so that deleting it also removes it from that registry.
    """
    from rq.job import JobStatus

    if not queue.remove(job):
        done = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
        deadline = time.monotonic() + timeout
        while job.get_status(refresh=True) not in done and time.monotonic() < deadline:
            time.sleep(0.05)
    job.delete()


def _collect(job: Any, count_workers: Callable[[], int]) -> Records:
    from rq.results import Result

    started = time.monotonic()
    hinted = False
    while True:
        result = job.latest_result(timeout=2)
        if result is not None and result.type == Result.Type.SUCCESSFUL:
            return list(result.return_value)
        if result is not None and result.type != Result.Type.RETRIED:
            reason = (result.exc_string or "").strip().splitlines()[-1:] or ["stopped"]
            raise RuntimeError(f"rq job {job.id} failed on its worker: {reason[0]}")
        if job.get_status(refresh=True) is None:
            raise RuntimeError(f"rq job {job.id} vanished from Redis")
        if not hinted and time.monotonic() - started > NO_WORKER_HINT and not count_workers():
            logger.warning("no rq worker listens on %s; start some with: "
                           "python -m backend.prelabel --worker", keys.PRELABEL_QUEUE)  # fmt: skip
            hinted = True


# -- progress ------------------------------------------------------------------------------


class ProgressLog:
    """``OUT.progress.jsonl``: a header naming the run, then one fsynced line per finished item.

    A crash can at worst tear the last line; it is dropped on the next open, so that item is
    simply predicted again. A header from another run (model, config, label config) is refused
    rather than mixing two models' predictions in one file.
    """

    def __init__(self, path: Path, fingerprint: dict[str, Any], fresh: bool = False) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.done: dict[str, dict[str, Any]] = {}
        if fresh:
            path.unlink(missing_ok=True)
        if path.exists() and path.stat().st_size:
            self._resume()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            header = {"format": PROGRESS_FORMAT, "run": fingerprint}
            path.write_text(json.dumps(header, sort_keys=True) + "\n", encoding="utf-8")
            fsync_path(path, strict=False)
            fsync_path(path.parent, strict=False)
        self._file = path.open("a", encoding="utf-8")

    def _resume(self) -> None:
        raw = self.path.read_bytes()
        good = raw[: raw.rfind(b"\n") + 1]  # a torn last line never reached fsync: drop it
        lines = good.decode("utf-8", "replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if not isinstance(header, dict) or header.get("format") != PROGRESS_FORMAT:
            raise ProgressMismatch(f"{self.path} is not a prelabel progress file")
        run = header.get("run") or {}
        if run != self.fingerprint:
            changed = sorted(k for k in {*run, *self.fingerprint}
                             if run.get(k) != self.fingerprint.get(k))  # fmt: skip
            raise ProgressMismatch(
                f"{self.path} holds predictions of another run (differs in: "
                f"{', '.join(changed)}); pass --fresh to start over or choose another --out"
            )
        for line in lines[1:]:
            record = json.loads(line)
            self.done[record["key"]] = record["prediction"]
        if len(good) < len(raw):
            logger.warning("dropping a torn last line of %s", self.path)
            with self.path.open("r+b") as handle:
                handle.truncate(len(good))
                os.fsync(handle.fileno())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Record finished items durably (one fsync per call)."""
        lines = [{"key": r["key"], "prediction": r["prediction"]} for r in records]
        if not lines:
            return
        for line in lines:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.done[line["key"]] = line["prediction"]
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def write_tasks_atomic(path: Path, tasks: list[dict[str, Any]]) -> None:
    """A JSON list, one task per line, written to a temp file, fsynced, renamed over ``path``:
    a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=False) as temp, temp.open("w", encoding="utf-8") as handle:
        handle.write("[\n" + ",\n".join(json.dumps(t, separators=(",", ":")) for t in tasks))
        handle.write("\n]\n")
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(path.parent, strict=False)  # best effort: some filesystems refuse folders
