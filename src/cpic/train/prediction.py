"""Predictions of a trained model for volumes: raw outputs in batches, and one row per volume."""

from __future__ import annotations

import torch

from cpic.nn import CPIC
from cpic.sources import VolumeSource
from cpic.util.checks import check_int
from cpic.util.progress import counter


@torch.no_grad()
def predict(
    model: CPIC,
    sources: list[VolumeSource],
    extra: torch.Tensor | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """The model's raw outputs for ``sources`` (``extra``: ``[N, E]`` extra features),
    ``batch_size`` volumes per call (a bar over the volumes on stderr with ``progress``).

    Example:
        >>> import cpic
        >>> from cpic.nn import Regression
        >>> model = cpic.CPIC((8, 8, 8), Regression(), features=2, patch=3, rank=2).eval()
        >>> vols = [cpic.open_volume(torch.rand(8, 8, 8)) for _ in range(3)]
        >>> predict(model, vols, batch_size=2).shape
        torch.Size([3])
    """
    check_int("batch_size", batch_size)
    outputs = []
    with counter(progress, "predict", total=len(sources), unit="volume") as bar:
        for start in range(0, len(sources), batch_size):
            part = None if extra is None else extra[start : start + batch_size]
            outputs.append(model(sources[start : start + batch_size], extra=part).cpu())
            bar.update(len(outputs[-1]))
    return torch.cat(outputs)


def prediction_rows(model: CPIC, classes: list | None, names: list[str], pred: torch.Tensor) -> list[dict]:
    """One flat row per volume: class (a name or an integer id, as in ``classes``:
    :func:`cpic.train.class_names`) and probabilities, the value, or one column per quantile.

    Example:
        >>> import cpic
        >>> from cpic.nn import Classification
        >>> model = cpic.CPIC((8, 8, 8), Classification(2), features=2, patch=3, rank=2)
        >>> prediction_rows(model, ["no", "yes"], ["a.nii"], torch.tensor([[0.0, 0.0]]))
        [{'volume': 'a.nii', 'predicted': 'no', 'class_id': 0, 'p_no': 0.5, 'p_yes': 0.5}]
    """
    task = model.head.task
    rows = [{"volume": name} for name in names]
    if task == "classification":
        probs = torch.softmax(pred, 1)
        labels = list(classes) if classes else list(range(probs.shape[1]))
        for row, p in zip(rows, probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            row.update(predicted=labels[best], class_id=best)
            row.update({f"p_{label}": value for label, value in zip(labels, p)})
    elif task == "quantile":
        for row, values in zip(rows, pred.tolist()):
            row.update({f"q{q:g}": v for q, v in zip(model.head.quantiles.tolist(), values)})
    else:
        values = pred if pred.dim() == 2 else pred[:, None]
        for row, v in zip(rows, values.tolist()):
            row.update({"value": v[0]} if len(v) == 1 else {f"value_{i}": x for i, x in enumerate(v)})
    return rows
