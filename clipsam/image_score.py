"""Image-level scores against the text features T (method spec §4).

``clip_max`` (the default) scores CLIP's frozen global embedding against T; the pipeline fuses
it with the map's maximum. ``hsf`` is AdaCLIP's *hybrid semantic fusion*, as its code does it
(``method/adaclip.py``, ``HybridSemanticFusion`` and ``visual_text_similarity``): take the
patches with the highest abnormal probability (stage logits averaged, then softmaxed), cluster
their tokens (all stages side by side) with KMeans, average each cluster over its members and
stages, average the cluster centres, L2-normalise, and fuse that centre with the global
embedding (0.2 · centre + 0.8 · global, re-normalised) before scoring it against T.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: AdaCLIP's defaults: ``k_clusters=20`` clusters over ``5 · k_clusters`` = 100 patches, and
#: the weight ``alpha`` of the cluster centre against the global embedding.
HSF_CLUSTERS = 20
HSF_PATCHES_PER_CLUSTER = 5
HSF_ALPHA = 0.2


def fuse_image_score(text_score: float, map_max: float, weight: float) -> float:
    """w · s + (1 − w) · max(A), clipped to [0, 1] (method spec §4)."""
    return float(np.clip(weight * text_score + (1.0 - weight) * map_max, 0.0, 1.0))


def clip_scores(global_embeds: Tensor, text: Tensor, scale: float = 100.0) -> Tensor:
    """softmax(scale · f̂ · Tᵀ)[abnormal] per image; ``global_embeds`` (B, E) and T (2, E)
    L2-normalised, as the backbone returns them."""
    return torch.softmax(scale * global_embeds.float() @ text.float().T, dim=-1)[:, 1]


def hsf_centres(
    tokens: Tensor, logits: Tensor, clusters: int = HSF_CLUSTERS, seed: int = 0
) -> Tensor:
    """AdaCLIP's fused patch centre per image (B, E), L2-normalised.

    ``tokens`` (B, S, N², E) are the head's per-stage text-space tokens, ``logits``
    (B, S, 2, N, N) their logits against T. The KMeans seed is fixed so a score never changes
    between runs (AdaCLIP leaves it unseeded).
    """
    batch, stages, patches, dim = tokens.shape
    tokens = F.normalize(tokens.float(), dim=-1)
    patch_logits = logits.float().mean(dim=1).flatten(2)  # (B, 2, N²), mean over stages
    abnormal = torch.softmax(patch_logits, dim=1)[:, 1]  # (B, N²)
    from sklearn.cluster import KMeans  # scikit-learn costs 2 s to import; this is opt-in

    count = min(patches, clusters * HSF_PATCHES_PER_CLUSTER)
    top = torch.topk(abnormal, k=count, dim=1).indices  # (B, k)
    centres = []
    for b in range(batch):
        selected = tokens[b][:, top[b]]  # (S, k, E)
        stacked = selected.permute(1, 0, 2).reshape(count, stages * dim)  # stages side by side
        k = min(clusters, count)
        labels = KMeans(n_clusters=k, n_init="auto", random_state=seed).fit_predict(
            stacked.cpu().double().numpy()
        )
        labels_t = torch.as_tensor(labels, device=tokens.device)
        means = [
            selected[:, labels_t == c].reshape(-1, dim).mean(dim=0)
            for c in np.unique(labels).tolist()
        ]
        centres.append(torch.stack(means).mean(dim=0))
    return F.normalize(torch.stack(centres), dim=-1)


def hsf_scores(
    tokens: Tensor,
    logits: Tensor,
    global_embeds: Tensor,
    text: Tensor,
    scale: float = 100.0,
    clusters: int = HSF_CLUSTERS,
) -> Tensor:
    """AdaCLIP's HSF image score per image: the fused embedding's abnormal probability."""
    centre = hsf_centres(tokens, logits, clusters)
    fused = HSF_ALPHA * centre + (1.0 - HSF_ALPHA) * F.normalize(global_embeds.float(), dim=-1)
    return clip_scores(F.normalize(fused, dim=-1), F.normalize(text.float(), dim=-1), scale)
