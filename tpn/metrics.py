"""Accuracy maths of the test protocol, as small pure functions on tensors.

Scores are per-video class probabilities: the softmax of every view's
logits, averaged over the video's views (the seed's `average_clips='prob'`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def average_views(logits: Tensor, num_views: int) -> Tensor:
    """(N * V, K) view logits, grouped video by video -> (N, K) mean softmax probabilities."""
    if num_views < 1 or logits.shape[0] % num_views:
        raise ValueError(f"{logits.shape[0]} view logits do not split into groups of {num_views} views")
    probs = logits.float().softmax(dim=-1)
    return probs.unflatten(0, (-1, num_views)).mean(dim=1)  # (N, V, K) -> (N, K)


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """(N,) bool: the label is among the k highest scores (k is capped at the class count)."""
    k = min(k, scores.shape[-1])
    top = scores.topk(k, dim=-1).indices  # (N, k)
    return (top == labels[:, None]).any(dim=-1)


def mean_class_accuracy(pred: Tensor, labels: Tensor) -> float:
    """Mean over the classes present in `labels` of each class's recall."""
    classes = labels.unique()
    if classes.numel() == 0:
        return float("nan")
    recalls = [(pred[labels == c] == c).float().mean() for c in classes]
    return float(torch.stack(recalls).mean())


def accuracy(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1, Top-5 and mean class accuracy in percent, from (N, K) scores and (N,) labels."""
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows for {labels.shape[0]} labels")
    if scores.shape[0] == 0:
        raise ValueError("no videos were evaluated: are the shards empty?")
    labels = labels.long()
    return {
        "top1": 100.0 * float(topk_correct(scores, labels, 1).float().mean()),
        "top5": 100.0 * float(topk_correct(scores, labels, 5).float().mean()),
        "mean_class_acc": 100.0 * mean_class_accuracy(scores.argmax(dim=-1), labels),
    }
