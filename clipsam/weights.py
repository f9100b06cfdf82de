"""Where pretrained weights come from: explicit paths, the cache dir, or a checked download.

Nothing here ever falls back to random weights: a missing file that cannot be downloaded is an
error naming the file and the environment variable that points at a local copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from clipsam.config import PipelineConfig

logger = logging.getLogger(__name__)

ENV_HOME = "CLIPSAM_HOME"
ENV_CLIP = "CLIPSAM_CLIP_WEIGHTS"
ENV_SAM = "CLIPSAM_SAM_CHECKPOINT"
ENV_HEAD = "CLIPSAM_HEAD"
ENV_OFFLINE = "CLIPSAM_OFFLINE"

#: The miniature world's backbones, trained here by ``training.miniature`` and shipped in the
#: package: the ``tiny`` preset's ``pretrained`` weights (tag ``miniature``, SAM size ``tiny``).
MINIATURE_TAG = "miniature"
MODEL_WEIGHTS_DIR = Path(__file__).parent / "model_weights"
MICRO_CLIP_WEIGHTS = MODEL_WEIGHTS_DIR / "micro_clip.safetensors"
MICRO_SAM_WEIGHTS = MODEL_WEIGHTS_DIR / "micro_sam.safetensors"

#: Official segment-anything checkpoints and their md5 sums.
SAM_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "vit_h": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "4b8939a88964f0f4ff5f5b2642c598a6",
    ),
    "vit_l": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "0b3195507c641ddb6910d2bb5adee89c",
    ),
    "vit_b": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "01ec64d29a2fca3f0661936605ae66f8",
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither on disk nor downloadable."""


@dataclass(frozen=True)
class WeightSource:
    """A checkpoint to load (``None`` for seeded random weights) and a name for backbone ids."""

    file: Path | None
    name: str


def resolve_weights(
    config: PipelineConfig, paths: WeightPaths
) -> tuple[WeightSource, WeightSource]:
    """Find (or download) both backbones' checkpoints before anything big is built."""
    if config.weights == "random":
        random = WeightSource(None, f"random-seed{config.seed}")
        return random, random
    clip = config.clip
    if not clip.clip_pretrained and paths.clip is None:
        raise ValueError(f"{clip.clip_model} has no pretrained weights; use weights='random'")
    clip_file = clip_weights_file(clip.clip_model, clip.clip_pretrained, paths)
    clip_name = clip.clip_pretrained if paths.clip is None else clip_file.stem
    if not config.mmr.use_sam:
        return WeightSource(clip_file, clip_name), WeightSource(None, "unused")
    sam_file = sam_checkpoint_file(config.sam.sam_model, paths)
    return WeightSource(clip_file, clip_name), WeightSource(sam_file, sam_file.stem)


@dataclass(frozen=True)
class WeightPaths:
    """Where to look for weights; read from the environment once, at the library's edge."""

    home: Path
    clip: Path | None = None
    sam: Path | None = None
    head: Path | None = None
    offline: bool = False

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> WeightPaths:
        env = os.environ if environ is None else environ
        home = Path(env.get(ENV_HOME) or Path.home() / ".cache" / "clipsam").expanduser()

        def path(name: str) -> Path | None:
            value = env.get(name)
            return Path(value).expanduser() if value else None

        offline = env.get(ENV_OFFLINE, "").lower() in ("1", "true", "yes")
        return cls(home, path(ENV_CLIP), path(ENV_SAM), path(ENV_HEAD), offline)


def clip_weights_file(model: str, tag: str, paths: WeightPaths) -> Path:
    """The open_clip checkpoint for ``model``/``tag``: explicit path, cache, or download."""
    if paths.clip is not None:
        return _existing(paths.clip, ENV_CLIP)
    if tag == MINIATURE_TAG:
        return _shipped(MICRO_CLIP_WEIGHTS, "python -m training.miniature.clip")
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    url = cfg.get("url", "") if cfg else ""
    if not url:
        raise WeightsNotFoundError(
            f"no download URL for open_clip {model!r} with tag {tag!r}; "
            f"set {ENV_CLIP} to a local checkpoint (.safetensors or .pt)"
        )
    target = paths.home / "clip" / os.path.basename(url)
    # openai URLs carry the file's sha256 as their second-to-last path segment.
    sha256 = url.split("/")[-2] if "openaipublic" in url else ""
    return _cached_or_download(url, target, ("sha256", sha256), ENV_CLIP, paths.offline)


def sam_checkpoint_file(model: str, paths: WeightPaths) -> Path:
    """The segment-anything checkpoint for ``model``: explicit path, cache, or download."""
    if paths.sam is not None:
        return _existing(paths.sam, ENV_SAM)
    if model == "tiny":
        return _shipped(MICRO_SAM_WEIGHTS, "python -m training.miniature.sam")
    try:
        url, md5 = SAM_CHECKPOINTS[model]
    except KeyError:
        raise WeightsNotFoundError(
            f"SAM {model!r} has no official checkpoint (known: {', '.join(SAM_CHECKPOINTS)}); "
            f"set {ENV_SAM} or use weights='random'"
        ) from None
    target = paths.home / "sam" / os.path.basename(url)
    return _cached_or_download(url, target, ("md5", md5), ENV_SAM, paths.offline)


def _shipped(path: Path, command: str) -> Path:
    if not path.is_file():
        raise WeightsNotFoundError(
            f"the miniature world's weights {path} are missing: `{command}` trains them "
            "(or use weights='random')"
        )
    return path


def _existing(path: Path, env_var: str) -> Path:
    if not path.is_file():
        raise WeightsNotFoundError(f"{env_var} points at {path}, which is not a file")
    return path


def _cached_or_download(
    url: str, target: Path, checksum: tuple[str, str], env_var: str, offline: bool
) -> Path:
    if target.is_file() and _matches(target, checksum):
        return target
    if target.is_file():
        logger.warning("%s fails its %s check; downloading it again", target, checksum[0])
    hint = (
        f"download {url} to {target} (or anywhere, and set {env_var} to it), "
        f"or set {ENV_HOME} to a folder that holds it"
    )
    if offline:
        raise WeightsNotFoundError(f"{target} is missing and {ENV_OFFLINE} is set: {hint}")
    try:
        _download(url, target)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsNotFoundError(
            f"{target} is missing and could not be downloaded ({exc}): {hint}"
        ) from exc
    if not _matches(target, checksum):
        target.unlink(missing_ok=True)
        raise WeightsNotFoundError(f"downloaded {url} but its {checksum[0]} does not match: {hint}")
    return target


def _matches(path: Path, checksum: tuple[str, str]) -> bool:
    algorithm, expected = checksum
    if not expected:
        return True
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(expected)


def _download(url: str, target: Path, timeout: float = 30.0) -> None:
    """Stream ``url`` to ``target`` with a progress bar; the file appears only when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    logger.info("downloading %s to %s", url, target)
    with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    partial.replace(target)
