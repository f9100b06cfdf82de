"""The frozen SAM stage: build segment-anything by size, embed images, decode batched prompts.

We call SAM's modules directly instead of ``SamPredictor`` so that one decoder call serves all
prompts of a level, and the image embedding can come from our feature cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor

from clipsam.config import SamConfig
from clipsam.precision import autocast, hold_weights_for_autocast
from clipsam.sam_fast import enable_fast_attention, enable_fast_decoder
from clipsam.weights import WeightSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamArch:
    """The sizes of one SAM; the defaults are those of the released checkpoints."""

    embed_dim: int
    depth: int
    heads: int
    global_attn: tuple[int, ...]
    img_size: int = 1024
    window_size: int = 14
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256


#: micro-SAM: the same modules at a size that trains on CPU in minutes
#: (``training/miniature/sam.py``); the ``tiny`` preset's SAM (shipped weights, or seeded).
MICRO_SAM_ARCH = SamArch(
    112,
    4,
    4,
    (1, 3),
    img_size=256,
    window_size=8,
    prompt_dim=128,
    decoder_mlp_dim=512,
    decoder_heads=4,
    iou_head_hidden_dim=128,
)

#: segment-anything's three released sizes, and micro-SAM (the ``tiny`` preset's).
SAM_ARCHS: dict[str, SamArch] = {
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "tiny": MICRO_SAM_ARCH,
}

#: micro-SAM's shipped weights (float16 safetensors, loaded into the float32 model).
MICRO_SAM_WEIGHTS = Path(__file__).resolve().parent / "model_weights" / "micro_sam.safetensors"


def build_sam_model(arch: SamArch) -> Sam:
    """segment-anything's ``_build_sam`` with the sizes as parameters; random weights."""
    prompt_dim, patch = arch.prompt_dim, 16
    grid = arch.img_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth,
            embed_dim=arch.embed_dim,
            img_size=arch.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.heads,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.global_attn,
            window_size=arch.window_size,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=prompt_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_heads,
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


class SamBackbone:
    """Image embeddings (batched) and prompt decoding (batched over prompts) for one SAM."""

    def __init__(self, sam: Sam, backbone_id: str, fast_attention: bool = True) -> None:
        self.sam = sam.eval().requires_grad_(False)
        self.backbone_id = backbone_id
        self.fast_attention = fast_attention and enable_fast_attention(sam.image_encoder) > 0
        if fast_attention:
            enable_fast_decoder(sam.mask_decoder)
        #: The encoder runs under this autocast; see :meth:`set_precision`.
        self.autocast_dtype: torch.dtype | None = None
        self.img_size = int(sam.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.img_size)
        self._dense_pe: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    @property
    def decoder_dtype(self) -> torch.dtype:
        return self.sam.mask_decoder.iou_token.weight.dtype

    def set_precision(self, dtype: torch.dtype | None) -> None:
        """Run the encoder under ``dtype`` autocast and hold the mask decoder in ``dtype``.

        The decoder is small (4 M parameters) but runs on every prediction, cached or not; under
        autocast its time goes largely to casting (K, 4096, 256) activations before each matmul,
        so it is converted once instead (as segment-anything-fast does). Prompt encoding stays
        in float32: its Fourier features of pixel coordinates need the precision.
        """
        self.autocast_dtype = dtype
        self.sam.mask_decoder.to(dtype or torch.float32)

    def hold_encoder_weights_in(self, dtype: torch.dtype) -> None:
        """Hold the image encoder's matmul weights in ``dtype``, the autocast it runs under
        (:func:`clipsam.precision.hold_weights_for_autocast`)."""
        hold_weights_for_autocast(self.sam.image_encoder, dtype)

    def input_size(self, original: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an image of ``original`` (H, W) after resizing its longest side."""
        return ResizeLongestSide.get_preprocess_shape(original[0], original[1], self.img_size)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> Tensor:
        """Image embeddings (B, prompt_dim, g, g) for RGB uint8 arrays of any sizes."""
        batch = []
        for image in images:
            resized = torch.as_tensor(self.transform.apply_image(image), device=self.device)
            batch.append(self.sam.preprocess(resized.permute(2, 0, 1).float()))
        with autocast(self.device, self.autocast_dtype):
            return self.sam.image_encoder(torch.stack(batch)).float()

    def dense_pe(self, dtype: torch.dtype) -> Tensor:
        """The prompt encoder's positional encoding of the embedding grid: constant, so kept."""
        key = (self.device, dtype)
        if key not in self._dense_pe:
            self._dense_pe[key] = self.sam.prompt_encoder.get_dense_pe().to(dtype)
        return self._dense_pe[key]

    @torch.inference_mode()
    def decode(
        self,
        embedding: Tensor,
        original: tuple[int, int],
        points: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask: bool = False,
        point_labels: np.ndarray | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One decoder call for K prompts → (masks (K, H, W) bool, predicted IoU (K,)).

        ``points`` (K, P, 2) are XY points, positive unless ``point_labels`` (K, P) says 0
        (background: an interactive negative click); ``boxes`` (K, 4) XYXY, both in original
        pixels. With ``multimask`` the highest-IoU of SAM's three masks is kept per prompt.
        """
        point_arg = None
        if points is not None:
            coords = torch.as_tensor(
                self.transform.apply_coords(points.astype(np.float32), original),
                dtype=torch.float32,
                device=self.device,
            )
            if point_labels is None:
                labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
            else:
                labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)
                if labels.shape != coords.shape[:2]:
                    raise ValueError(
                        f"point_labels {tuple(labels.shape)} do not match points "
                        f"{tuple(coords.shape[:2])}"
                    )
            point_arg = (coords, labels)
        box_arg = None
        if boxes is not None:
            box_arg = torch.as_tensor(
                self.transform.apply_boxes(boxes.astype(np.float32), original),
                dtype=torch.float32,
                device=self.device,
            )
        sparse, dense = self.sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)
        dtype = self.decoder_dtype
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding.to(self.device, dtype),
            image_pe=self.dense_pe(dtype),
            sparse_prompt_embeddings=sparse.to(dtype),
            dense_prompt_embeddings=dense[:1].to(dtype).expand_as(dense),  # still a broadcast
            multimask_output=multimask,
        )
        low_res, iou = low_res.float(), iou.float()
        best = iou.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        low_res, iou = low_res[rows, best][:, None], iou[rows, best]
        masks = self.sam.postprocess_masks(low_res, self.input_size(original), original)
        return masks[:, 0] > self.sam.mask_threshold, iou.float()


def read_sam_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A SAM state dict from an official ``.pth`` or a ``.safetensors`` file, as float32."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path), device="cpu")
    else:
        state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    return {
        key: value.float() if value.is_floating_point() else value
        for key, value in state_dict.items()
    }


def load_sam_weights(sam: Sam, path: str | Path) -> Sam:
    """Load ``path`` into ``sam`` (``strict=True``: every tensor, and only those)."""
    sam.load_state_dict(read_sam_state_dict(path), strict=True)
    return sam


def load_micro_sam(path: str | Path = MICRO_SAM_WEIGHTS) -> Sam:
    """micro-SAM as segment-anything builds a SAM: ``build_sam_model`` then the weights."""
    return load_sam_weights(build_sam_model(MICRO_SAM_ARCH), path).eval()


def build_sam(
    config: SamConfig, weights: WeightSource, seed: int, fast_attention: bool = True
) -> SamBackbone:
    """Build SAM of ``config.sam_model`` size; load ``weights`` or seed randomly."""
    try:
        arch = SAM_ARCHS[config.sam_model]
    except KeyError:
        raise ValueError(
            f"unknown SAM model {config.sam_model!r}; choose one of: {', '.join(SAM_ARCHS)}"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam_model(arch)
    if weights.file is not None:
        logger.info("loading SAM weights from %s", weights.file)
        load_sam_weights(sam, weights.file)
    return SamBackbone(sam, f"sam-{config.sam_model}/{weights.name}", fast_attention)
