"""Retrieval and classification metrics (the WavCaps / LAION-CLAP protocol, with the sorted audio-to-text mAP@10).

Ranks are 1-based. Ties are broken pessimistically: an item tied with a correct one counts as ranked above it, so a
model that scores everything equally gets the worst rank, never a perfect one. (A clip's own captions tied with each
other are interchangeable and do not push each other down.)
"""

import numpy as np

RECALL_AT = (1, 5, 10)
# The headline metrics of each task, in the order tables, plots, logs and cards show them (the JSON keeps them all).
RETRIEVAL_METRICS = tuple(
    f"{direction}_{name}" for direction in ("t2a", "a2t") for name in [*(f"R@{k}" for k in RECALL_AT), "mAP@10"]
)
HEADLINE_METRICS = {
    "retrieval": list(RETRIEVAL_METRICS),
    "zero-shot": ["top1_accuracy", "top5_accuracy"],
    "multiple-choice": ["accuracy"],
}


def _ranks_of(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of column `targets[i]` within row `i` of `scores` (higher is better; ties count against)."""
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    return (scores >= target_scores).sum(axis=1)  # includes the target itself, and every tie


def text_to_audio_ranks(similarity: np.ndarray, caption_to_clip: np.ndarray) -> np.ndarray:
    """`similarity` is `(captions, clips)`; returns each caption's rank of its own clip."""
    return _ranks_of(similarity, caption_to_clip)


def audio_to_text_ranks(similarity: np.ndarray, caption_to_clip: np.ndarray) -> list[np.ndarray]:
    """For each clip, the ascending ranks of its captions when that clip queries all captions.

    The j-th best of a clip's own captions has rank `j + (other clips' captions scoring >= it)`: ties with
    other clips' captions count against the model, ties among the clip's own captions do not (they are
    interchangeable)."""
    by_clip = similarity.T  # (clips, captions)
    ranks = []
    for clip in range(by_clip.shape[0]):
        is_own = caption_to_clip == clip
        if not is_own.any():
            raise ValueError(f"clip {clip} has no caption; every clip needs at least one for retrieval.")
        own = np.sort(by_clip[clip, is_own])[::-1]
        others = np.sort(by_clip[clip, ~is_own])
        beaten_by = others.size - np.searchsorted(others, own, side="left")  # others scoring >= each own caption
        ranks.append(np.arange(1, own.size + 1) + beaten_by)
    return ranks


def retrieval_metrics(similarity: np.ndarray, caption_to_clip) -> dict[str, float]:
    """Both retrieval directions from a `(captions, clips)` similarity matrix.

    Returns percentages for R@k and mAP@10 (`t2a_R@1`, ..., `a2t_mAP@10`) and mean/median ranks.
    Audio to text counts a hit at k when any of the clip's captions ranks in the top k; its mAP@10 is
    `(1/N) * sum_j j / r_j` over the clip's N captions ranked in the top 10, ranks `r_j` sorted ascending.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    caption_to_clip = np.asarray(caption_to_clip, dtype=np.int64)
    if similarity.shape[0] != caption_to_clip.shape[0]:
        raise ValueError(
            f"similarity has {similarity.shape[0]} caption rows but caption_to_clip has "
            f"{caption_to_clip.shape[0]} entries."
        )
    t2a = text_to_audio_ranks(similarity, caption_to_clip)
    a2t = audio_to_text_ranks(similarity, caption_to_clip)
    best_a2t = np.array([r[0] for r in a2t])
    metrics = {}
    for k in RECALL_AT:
        metrics[f"t2a_R@{k}"] = 100.0 * float(np.mean(t2a <= k))
    metrics["t2a_mAP@10"] = 100.0 * float(np.mean(np.where(t2a <= 10, 1.0 / t2a, 0.0)))
    metrics["t2a_mean_rank"] = float(np.mean(t2a))
    metrics["t2a_median_rank"] = float(np.median(t2a))
    for k in RECALL_AT:
        metrics[f"a2t_R@{k}"] = 100.0 * float(np.mean(best_a2t <= k))
    average_precisions = []
    for ranks in a2t:
        hits = ranks[ranks <= 10]
        average_precisions.append(np.sum(np.arange(1, len(hits) + 1) / hits) / len(ranks))
    metrics["a2t_mAP@10"] = 100.0 * float(np.mean(average_precisions))
    metrics["a2t_mean_rank"] = float(np.mean(best_a2t))
    metrics["a2t_median_rank"] = float(np.median(best_a2t))
    return metrics


def classification_metrics(logits: np.ndarray, targets, top_k=(1, 5)) -> dict[str, float]:
    """Top-k accuracy (percent) from `(items, classes)` scores; ties count against the true class."""
    logits = np.asarray(logits, dtype=np.float64)
    ranks = _ranks_of(logits, np.asarray(targets, dtype=np.int64))
    return {f"top{k}_accuracy": 100.0 * float(np.mean(ranks <= k)) for k in top_k if k <= logits.shape[1]}
