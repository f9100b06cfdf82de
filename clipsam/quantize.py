"""int8 dynamic quantisation of the frozen encoders' linear layers (an option, CPU only).

``quantize="int8"`` (:class:`~clipsam.config.PipelineConfig`) stores the weights of every linear
layer of CLIP's visual tower (attention in/out projections, MLP) and of SAM's image encoder
(qkv, proj, MLP) in int8, one scale per output channel; activations are quantised per call
(``torch.ao.quantization.quantize_dynamic``, fbgemm/x86 kernels). Everything else (attention
itself, norms, convolutions, the text tower, SAM's decoder, the head) stays fp32. It changes
what is computed, so it is never the default: its agreement with fp32 on the miniature world's
trained weights is measured in ``tests/miniature/test_int8.py`` and quoted in the README.

``torch.ao.quantization`` is deprecated in favour of torchao (not a dependency here) but works
in this torch; its deprecation warnings are silenced at the one call.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def _quantize(module: nn.Module) -> nn.Module:
    """``module`` with its ``nn.Linear`` children swapped in place for int8 dynamic ones."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return quantize_dynamic(
            module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )


def int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """An int8 dynamic linear layer holding ``weight`` (out, in) and ``bias``."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.detach().float().cpu())
        if bias is not None:
            linear.bias.copy_(bias.detach().float().cpu())
    quantized: nn.Sequential = _quantize(nn.Sequential(linear))  # type: ignore[assignment]
    return quantized[0]


def quantize_clip_visual(visual: Any) -> int:
    """int8 linear layers in open_clip's visual tower; returns how many.

    The MLPs are swapped in place. ``nn.MultiheadAttention`` keeps its fp32 projections (its own
    forward reads them as tensors); each block gets ``int8_in_proj`` and ``int8_out_proj``
    beside it, which the tapped forward (``clipsam.clip_backbone``) uses when present.
    """
    count = 0
    for block in visual.transformer.resblocks:
        attn = block.attn
        block.int8_in_proj = int8_linear(attn.in_proj_weight, attn.in_proj_bias)
        block.int8_out_proj = int8_linear(attn.out_proj.weight, attn.out_proj.bias)
        _quantize(block.mlp)
        count += 2 + sum(1 for m in block.mlp.modules() if _is_int8(m))
    return count


def quantize_sam_encoder(encoder: nn.Module) -> int:
    """int8 linear layers in SAM's image encoder (the blocks' qkv, proj, lin1, lin2)."""
    for block in encoder.blocks:  # type: ignore[union-attr]
        _quantize(block)
    return sum(1 for m in encoder.modules() if _is_int8(m))


def _is_int8(module: nn.Module) -> bool:
    return type(module).__name__ == "Linear" and type(module).__module__.startswith(
        "torch.ao.nn.quantized.dynamic"
    )
