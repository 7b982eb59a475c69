"""Classification and regression metrics, vectorised in torch, plus the pinball (quantile) loss.

Every metric returns a Python ``float``; an empty input gives ``nan`` (a mean over nothing).
:func:`pinball_loss` returns a differentiable scalar tensor, so it serves as a training loss too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.nn import heads
from cpic.util import norms


def _check_labels(labels: Tensor, n: int, num_classes: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match scores, got {tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def accuracy(scores: Tensor, labels: Tensor) -> float:
    """The fraction of rows whose highest score is at the true label.

    Args:
        scores: ``[N, C]`` class scores (logits, probabilities, anything monotone).
        labels: ``[N]`` integer labels in ``[0, C)``.

    Example:
        >>> import torch
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1]))
        0.6666666666666666
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [N, C], got {tuple(scores.shape)}")
    _check_labels(labels, scores.shape[0], scores.shape[1])
    return (scores.argmax(dim=1) == labels).double().mean().item()


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks (1-based) of ``x`` along its first axis, ties sharing their average rank.

    Columns of a 2-D ``x`` are ranked independently. The result is float64.

    Example:
        >>> import torch
        >>> _average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist()
        [3.5, 1.0, 3.5, 2.0]
    """
    n = x.shape[0]
    ordered, order = torch.sort(x, dim=0, stable=True)
    position = torch.arange(n, device=x.device).view((n,) + (1,) * (x.ndim - 1)).expand_as(x)
    changes = ordered[1:] != ordered[:-1]
    ones = torch.ones_like(ordered[:1], dtype=torch.bool)
    starts = torch.cat([ones, changes])  # first element of each tie group
    ends = torch.cat([changes, ones])  # last element of each tie group
    first = torch.where(starts, position, 0).cummax(dim=0).values
    last = torch.where(ends, position, n).flip(0).cummin(dim=0).values.flip(0)
    mean_rank = (first + last).double() / 2 + 1
    return torch.empty_like(mean_rank).scatter_(0, order, mean_rank)


def _binary_column(scores: Tensor) -> Tensor:
    if scores.ndim == 1:
        return scores
    if scores.ndim == 2 and scores.shape[1] == 2:
        return scores[:, 1]
    raise ValueError(f"scores must have shape [N], [N, 2] or [N, C], got {tuple(scores.shape)}")


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic, ties counting one half.

    ``scores`` of shape ``[N]`` (or ``[N, 2]``, of which column 1 is used) with labels 0/1 give the
    binary AUC. ``[N, C]`` with ``C > 2`` gives the macro one-vs-rest AUC: the mean over the classes
    that have both positive and negative rows. When no class has both (e.g. all labels equal), the
    AUC is undefined and ``nan`` is returned.

    Example:
        >>> import torch
        >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
        >>> roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 1]))
        nan
    """
    if torch.isnan(scores).any():
        raise ValueError("scores must not contain NaN")
    multiclass = scores.ndim == 2 and scores.shape[1] > 2
    if not multiclass:
        scores = _binary_column(scores)
    num_classes = scores.shape[1] if multiclass else 2
    _check_labels(labels, scores.shape[0], num_classes)
    if multiclass:
        positive = labels[:, None] == torch.arange(num_classes, device=labels.device)
    else:
        scores, positive = scores[:, None], (labels == 1)[:, None]
    ranks = _average_ranks(scores)
    n_pos = positive.sum(dim=0).double()
    n_neg = scores.shape[0] - n_pos
    u = torch.where(positive, ranks, 0).sum(dim=0) - n_pos * (n_pos + 1) / 2
    defined = (n_pos > 0) & (n_neg > 0)
    if not defined.any():
        return float("nan")
    return (u[defined] / (n_pos[defined] * n_neg[defined])).mean().item()


def mean_absolute_error(pred: Tensor, target: Tensor) -> float:
    """The mean of ``|pred - target|`` over all elements; the shapes must be equal.

    Example:
        >>> import torch
        >>> mean_absolute_error(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 3.0]))
        0.5
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
    return (pred.double() - target.double()).abs().mean().item()


def pinball_loss(pred: Tensor, target: Tensor, quantiles: Sequence[float] | Tensor) -> Tensor:
    """The pinball (quantile) loss, averaged over rows and quantiles; differentiable in ``pred``.

    For quantile ``q`` and residual ``r = target - pred`` the loss is ``q * r`` when ``r >= 0`` and
    ``(q - 1) * r`` otherwise; its minimiser over a constant prediction is the ``q``-quantile.

    Args:
        pred: ``[N, Q]`` predicted quantiles.
        target: ``[N]`` observed values.
        quantiles: ``Q`` levels, each strictly between 0 and 1.

    Example:
        >>> import torch
        >>> pred = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
        >>> pinball_loss(pred, torch.tensor([1.0, 1.0]), [0.1, 0.9])
        tensor(0.2750)
    """
    if pred.ndim != 2:
        raise ValueError(f"pred must have shape [N, Q], got {tuple(pred.shape)}")
    if target.shape != pred.shape[:1]:
        raise ValueError(f"target must have shape ({pred.shape[0]},) like pred, got {tuple(target.shape)}")
    q = torch.as_tensor(quantiles, dtype=pred.dtype, device=pred.device)
    if q.shape != pred.shape[1:]:
        raise ValueError(f"quantiles must have {pred.shape[1]} entries like pred, got shape {tuple(q.shape)}")
    if not ((q > 0) & (q < 1)).all():
        raise ValueError(f"quantiles must lie strictly between 0 and 1, got {q.tolist()}")
    return heads.pinball_loss(pred, target.to(pred.dtype), q)


def psnr(pred: Tensor, target: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``pred`` against ``target`` for values of range
    ``peak``; infinite for an exact match.

    Example:
        >>> round(psnr(torch.tensor([0.0, 0.5]), torch.tensor([0.1, 0.5])), 2)
        23.01
    """
    mse = float((pred.double() - target.double()).square().mean())
    return 10 * math.log10(peak**2 / mse) if mse > 0 else math.inf


def relative_error(approx: Tensor, truth: Tensor) -> float:
    """``||approx - truth|| / ||truth||`` over all elements, as a float (``||approx||`` where
    ``truth`` is all zero; :func:`cpic.util.norms.relative_error`).

    Example:
        >>> round(relative_error(torch.tensor([3.0, 4.5]), torch.tensor([3.0, 4.0])), 6)
        0.1
    """
    return float(norms.relative_error(approx, truth)) if truth.numel() else math.nan
