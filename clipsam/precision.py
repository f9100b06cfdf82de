"""Which device a process runs on, and which reduced precision the frozen backbones may run in
there.

bf16 halves the cost of CPU matmuls only where the hardware has bf16 dot products (AVX-512 BF16
or AMX); elsewhere autocast would emulate it and be slower than fp32, so ``auto`` checks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from clipsam.config import Precision

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str | torch.device) -> torch.device:
    """The device a config names: ``auto`` is CUDA when present, else the CPU; any other name
    (``cpu``, ``cuda``, ``cuda:1``, ``mps``...) is taken as it is. The one resolver the pipeline
    and the trainer share."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists native bf16 dot products (x86 Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in info.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` when ``dtype`` is set, else nothing."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def hold_weights_for_autocast(
    module: torch.nn.Module, dtype: torch.dtype, matrices: tuple[torch.nn.Parameter, ...] = ()
) -> None:
    """Store in ``dtype`` the frozen weights that ``dtype`` autocast casts on every call: those
    of linear and convolution layers, ``nn.MultiheadAttention``'s packed projections, and bare
    ``matrices`` that only meet matmuls.

    Autocast keeps a cast copy only of weights that require grad, so a frozen encoder's weights
    are cast again on every forward (CLIP ViT-L: 1.2 GB read, 0.6 GB written per image). Holding
    them cast gives bit-identical outputs under that autocast, skips the casts (≈3 % of the
    forward) and halves their memory. Norms, embeddings and rel-pos tables are left as they
    are (autocast does not cast them for a matmul). The module must then run only under
    ``dtype`` autocast."""
    matmuls = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention)
    for child in module.modules():
        if isinstance(child, matmuls):
            child.to(dtype)
    for matrix in matrices:
        matrix.data = matrix.data.to(dtype)
