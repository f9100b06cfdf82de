"""The frozen CLIP stage: multi-stage patch tokens, the global embedding, and text features.

The weights live in open_clip's own modules; only the forward pass is ours, because we need three
things open_clip's forward does not give in one pass: the residual stream after several blocks,
a value-value attention side path for the training-free head, and SDPA attention.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed
from PIL import Image
from torch import Tensor, nn

from clipsam.config import ClipConfig
from clipsam.precision import autocast, hold_weights_for_autocast
from clipsam.prompts import category_phrase, prompt_sentences
from clipsam.weights import WeightSource

logger = logging.getLogger(__name__)

open_clip.add_model_config(Path(__file__).parent / "model_configs")

_MEAN = np.asarray(open_clip.OPENAI_DATASET_MEAN, dtype=np.float32)
_STD = np.asarray(open_clip.OPENAI_DATASET_STD, dtype=np.float32)
_TEXT_BATCH = 128


class ClipBackbone(nn.Module):
    """Wraps an open_clip ``CLIP`` model; frozen, always run under ``inference_mode``.

    ``encode_images`` returns, per batch of ``B`` images:
    ``stages`` (B, S, N², width) residual stream after each tapped block, CLS dropped;
    ``global`` (B, E) the normalised image embedding; ``vv`` (B, N², E) value-value tokens
    projected into the joint space.
    """

    def __init__(self, model: nn.Module, config: ClipConfig, backbone_id: str) -> None:
        super().__init__()
        self.model: Any = model.eval().requires_grad_(False)
        self.config = config
        self.backbone_id = backbone_id
        self.tokenizer = open_clip.get_tokenizer(config.clip_model)
        visual = self.visual
        blocks = visual.transformer.resblocks
        if max(config.layers) > len(blocks) or min(config.layers) < 1:
            raise ValueError(
                f"layers {config.layers} outside 1..{len(blocks)} of {config.clip_model}"
            )
        for block in blocks:
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise ValueError(f"{config.clip_model} uses custom attention blocks; unsupported")
        self.grid = int(visual.grid_size[0])
        self.width = int(visual.transformer.width)
        self.embed_dim = int(visual.output_dim)
        self._text_cache: dict[tuple[str, tuple[str, ...]], Tensor] = {}
        self._text_lock = threading.Lock()
        self._text_key_locks: dict[tuple[str, tuple[str, ...]], threading.Lock] = {}
        #: Set by the pipeline (``clipsam.precision``): image forwards run under this autocast.
        self.autocast_dtype: torch.dtype | None = None

    def hold_weights_in(self, dtype: torch.dtype) -> None:
        """Hold the visual tower's matmul weights in ``dtype``, the autocast its forwards run
        under (:func:`clipsam.precision.hold_weights_for_autocast`); the text tower keeps fp32."""
        proj = self.visual.proj
        hold_weights_for_autocast(self.visual, dtype, (proj,) if proj is not None else ())

    @property
    def visual(self) -> Any:
        return self.model.visual

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """Squash each RGB array to the input size (bicubic), OpenAI mean/std → (B, 3, S, S)."""
        size = self.config.image_size
        batch = np.stack(
            [
                np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
                for img in images
            ]
        )
        pixels = (batch.astype(np.float32) / 255.0 - _MEAN) / _STD
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(self.device)

    @torch.inference_mode()
    def encode_images(self, pixels: Tensor) -> dict[str, Tensor]:
        with autocast(self.device, self.autocast_dtype):
            out = self._encode_images(pixels)
        return {name: tensor.float() for name, tensor in out.items()}

    def _encode_images(self, pixels: Tensor) -> dict[str, Tensor]:
        visual = self.visual
        blocks = visual.transformer.resblocks
        taps = set(self.config.layers)
        vv_start = len(blocks) - max(0, min(self.config.vv_blocks, len(blocks)))
        x = visual._embeds(pixels)
        stages: list[Tensor] = []
        vv: Tensor | None = None
        for index, block in enumerate(blocks):
            if index == vv_start:
                vv = x
            x, vv = _block_forward(block, x, vv)
            if index + 1 in taps:
                stages.append(x[:, 1:])
        global_embed = visual.ln_post(x[:, 0]) @ visual.proj
        vv_tokens = visual.ln_post(vv[:, 1:] if vv is not None else x[:, 1:]) @ visual.proj
        return {
            "stages": torch.stack(stages, dim=1),
            "global": F.normalize(global_embed, dim=-1),
            "vv": vv_tokens,
        }

    @torch.inference_mode()
    def encode_text(self, sentences: Sequence[str]) -> Tensor:
        """Normalised text embeddings (n, E).

        With a causal text tower, tokens past the longest sentence's end never influence it, so
        the batch is cut to that length (exact, and ~5× faster than the full 77 tokens).
        """
        chunks = []
        for start in range(0, len(sentences), _TEXT_BATCH):
            tokens = self.tokenizer(list(sentences[start : start + _TEXT_BATCH])).to(self.device)
            chunks.append(F.normalize(self._text_forward(tokens), dim=-1))
        return torch.cat(chunks)

    def _text_forward(self, tokens: Tensor) -> Tensor:
        model = self.model
        if getattr(model, "text_pool_type", None) != "argmax" or model.attn_mask is None:
            return model.encode_text(tokens)  # other text towers: open_clip's own forward
        length = int(tokens.argmax(dim=-1).max()) + 1  # EOT has the highest token id
        tokens = tokens[:, :length]
        x = model.token_embedding(tokens) + model.positional_embedding[:length]
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return pooled @ model.text_projection

    def text_features(
        self, category: str | None, defect_words: Sequence[str] = (), store: Any = None
    ) -> Tensor:
        """T ∈ R^{2×E}: row 0 normal, row 1 abnormal; computed once per (category, words).

        ``store`` (a :class:`~clipsam.cache.FeatureCache`) keeps them across processes too.
        Only callers of the same key wait for each other while it is computed.
        """
        key = (category_phrase(category), tuple(w.strip() for w in defect_words if w.strip()))
        with self._text_lock:
            cached = self._text_cache.get(key)
            key_lock = self._text_key_locks.setdefault(key, threading.Lock())
        if cached is not None:
            return cached
        with key_lock:
            cached = self._text_cache.get(key)
            if cached is None:
                cached = self._load_or_compute_text(key, store)
                with self._text_lock:
                    self._text_cache[key] = cached
        return cached

    def _load_or_compute_text(self, key: tuple[str, tuple[str, ...]], store: Any) -> Tensor:
        namespace = f"text/{self.backbone_id}"
        name = hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()
        entry = store.get(namespace, name) if store is not None else None
        if entry is not None:
            return entry["text"].to(self.device)
        normal, abnormal = prompt_sentences(*key)
        rows = [self.encode_text(normal).mean(0), self.encode_text(abnormal).mean(0)]
        features = F.normalize(torch.stack(rows), dim=-1)
        logger.info("text features for %r computed from %d sentences", key, len(normal) * 2)
        if store is not None:
            store.put(namespace, name, {"text": features})
        return features


def _block_forward(block: Any, x: Tensor, vv: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One open_clip ``ResidualAttentionBlock`` with SDPA, plus the value-value side path.

    The side path (CLIP Surgery / AnomalyCLIP style) adds value-value self-attention of the
    main stream's normalised input, and skips the MLP, so patch tokens keep local semantics.
    """
    attn: nn.MultiheadAttention = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    hidden = block.ln_1(x)
    # int8 projections beside the block when quantised (clipsam.quantize), else the fp32 ones.
    in_proj = getattr(block, "int8_in_proj", None)
    out_proj = getattr(block, "int8_out_proj", attn.out_proj)
    if in_proj is not None:
        q, k, v = in_proj(hidden).chunk(3, dim=-1)
    else:
        q, k, v = F.linear(hidden, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split(t: Tensor) -> Tensor:
        return t.view(batch, length, heads, width // heads).transpose(1, 2)

    def merge(t: Tensor) -> Tensor:
        return out_proj(t.transpose(1, 2).reshape(batch, length, width))

    out = merge(F.scaled_dot_product_attention(split(q), split(k), split(v)))
    if vv is not None:
        values = split(v)
        vv = vv + merge(F.scaled_dot_product_attention(values, values, values))
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, vv


def build_clip(config: ClipConfig, weights: WeightSource, seed: int) -> ClipBackbone:
    """Create the open_clip model at ``config.image_size``; load ``weights`` or seed randomly."""
    with torch.random.fork_rng(devices=[]), _quiet_root_logger():
        torch.manual_seed(seed)
        model = open_clip.create_model(
            config.clip_model,
            pretrained=None,
            force_quick_gelu=config.activation == "quick_gelu",
            force_image_size=config.image_size,
        )
    if weights.file is not None:
        _load_clip_weights(model, weights.file)
    source = weights.name
    layers = "-".join(str(layer) for layer in config.layers)
    backbone_id = (
        f"{config.clip_model}/{source}/{config.image_size}px/{config.activation}/L{layers}"
    )
    return ClipBackbone(model, config, backbone_id)


def _not_from_open_clip(record: logging.LogRecord) -> bool:
    return "open_clip" not in record.pathname


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip warns on the root logger that it built random weights; we load them next.

    A filter on the root logger drops only open_clip's own records: ``logging.disable`` would
    silence every thread of the process while the model loads.
    """
    root = logging.getLogger()
    root.addFilter(_not_from_open_clip)
    try:
        yield
    finally:
        root.removeFilter(_not_from_open_clip)


def _load_clip_weights(model: nn.Module, path: Path) -> None:
    """Load an open_clip checkpoint (safetensors, state dict, or OpenAI's TorchScript archive).

    Position embeddings are resized (bicubic, antialias) from the checkpoint's grid to ours.
    """
    logger.info("loading CLIP weights from %s", path)
    state_dict: dict[str, Tensor]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    elif _is_torchscript(path):
        # OpenAI's release format; checksum-verified when downloaded by us.
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state_dict.pop(key, None)
    else:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        state_dict = loaded.get("state_dict", loaded)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    resize_pos_embed(state_dict, model)
    model.load_state_dict(state_dict, strict=True)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())
