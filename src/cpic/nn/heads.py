"""Task heads: per-volume vectors -> predictions, with the loss and the target check of each task.

A head is declared without its input size (``Classification(classes=10)``); the model calls
``build(in_features)`` once it knows the projection's output size plus any extra features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpic.util.checks import check_int


def pinball_loss(pred: Tensor, target: Tensor, quantiles: Tensor) -> Tensor:
    """Mean quantile (pinball) loss of ``pred [N, Q]`` for ``target [N]`` at ``quantiles [Q]``.

    Example:
        >>> import torch
        >>> loss = pinball_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([1.0]), torch.tensor([0.1, 0.9]))
        >>> round(loss.item(), 6)
        0.05
    """
    diff = target[:, None] - pred
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


class Head(nn.Module, ABC):
    """Base of the task heads: an MLP from ``in_features`` to ``outputs`` values."""

    task = ""
    #: one prediction per volume (False for a decoder of voxels, as :class:`Reconstruction`)
    per_volume = True

    def __init__(self, outputs: int, hidden: int | None = 64, dropout: float = 0.0):
        super().__init__()
        self.outputs, self.hidden, self.dropout = outputs, hidden, dropout
        self.net: nn.Module | None = None

    def build(self, in_features: int) -> None:
        """Create the layers for ``in_features`` inputs."""
        if self.hidden:
            self.net = nn.Sequential(
                nn.LayerNorm(in_features),
                nn.Linear(in_features, self.hidden),
                nn.GELU(),
                nn.Dropout(self.dropout),
                nn.Linear(self.hidden, self.outputs),
            )
        else:
            self.net = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, self.outputs))

    def forward(self, z: Tensor) -> Tensor:
        if self.net is None:
            raise RuntimeError("the head is not built: use it inside cpic.CPIC, or call build(in_features).")
        return self.net(z)

    def config(self) -> dict:
        """The arguments that rebuild this head (see :func:`head_from_config`)."""
        return {"task": self.task, "hidden": self.hidden, "dropout": self.dropout}

    @abstractmethod
    def check_targets(self, targets, name: str = "targets") -> Tensor:
        """``targets`` as a tensor this head's loss takes; a ``ValueError`` naming ``name`` if not."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The training loss of predictions ``pred`` for ``target``."""


def _as_float_targets(targets, name: str, columns: int) -> Tensor:
    try:
        t = torch.as_tensor(targets, dtype=torch.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers for a regression head, got {targets!r}.") from None
    if columns == 1 and t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    expected = 1 if columns == 1 else 2
    if t.dim() != expected or (columns > 1 and t.shape[1] != columns):
        raise ValueError(
            f"{name} must have shape [N]{'' if columns == 1 else f', {columns}'}, got {tuple(t.shape)}."
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return t


class Classification(Head):
    """Class logits ``[B, classes]``; cross-entropy loss; integer targets in ``[0, classes)``.

    Example:
        >>> import torch
        >>> head = Classification(classes=3)
        >>> head.build(8)
        >>> head(torch.rand(2, 8)).shape
        torch.Size([2, 3])
    """

    task = "classification"

    def __init__(
        self, classes: int, hidden: int | None = 64, dropout: float = 0.0, label_smoothing: float = 0.0
    ):
        check_int("classes", classes, low=2)
        super().__init__(classes, hidden, dropout)
        self.classes, self.label_smoothing = classes, label_smoothing

    def config(self) -> dict:
        return super().config() | {"classes": self.classes, "label_smoothing": self.label_smoothing}

    def check_targets(self, targets, name: str = "targets") -> Tensor:
        t = torch.as_tensor(targets)
        if t.dtype.is_floating_point and bool((t == t.round()).all()):
            t = t.long()
        if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8) or t.dim() != 1:
            raise ValueError(f"{name} must be integer class ids [N] for classification, got {targets!r}.")
        bad = (t < 0) | (t >= self.classes)
        if bad.any():
            raise ValueError(
                f"{name}: class id {int(t[bad][0])} is outside [0, {self.classes}) for this head."
            )
        return t.long()

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred, target, label_smoothing=self.label_smoothing)


class Regression(Head):
    """Real values ``[B]`` (``[B, outputs]`` for several); mean squared error (or ``"l1"``).

    Example:
        >>> import torch
        >>> head = Regression()
        >>> head.build(4)
        >>> head(torch.rand(5, 4)).shape
        torch.Size([5])
    """

    task = "regression"

    def __init__(self, outputs: int = 1, hidden: int | None = 64, dropout: float = 0.0, loss: str = "mse"):
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {loss!r}.")
        super().__init__(outputs, hidden, dropout)
        self.loss_name = loss

    def config(self) -> dict:
        return super().config() | {"outputs": self.outputs, "loss": self.loss_name}

    def forward(self, z: Tensor) -> Tensor:
        out = super().forward(z)
        return out[:, 0] if self.outputs == 1 else out

    def check_targets(self, targets, name: str = "targets") -> Tensor:
        return _as_float_targets(targets, name, self.outputs)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target) if self.loss_name == "mse" else F.l1_loss(pred, target)


class QuantileRegression(Head):
    """Quantiles ``[B, Q]`` of a real target, trained with the pinball loss.

    Example:
        >>> import torch
        >>> head = QuantileRegression((0.1, 0.5, 0.9))
        >>> head.build(4)
        >>> head(torch.rand(5, 4)).shape
        torch.Size([5, 3])
    """

    task = "quantile"

    def __init__(
        self, quantiles: Sequence[float] = (0.1, 0.5, 0.9), hidden: int | None = 64, dropout: float = 0.0
    ):
        q = torch.as_tensor(list(quantiles), dtype=torch.float32)
        if q.dim() != 1 or not len(q) or not bool(((q > 0) & (q < 1)).all()):
            raise ValueError(f"quantiles must be a non-empty list of numbers in (0, 1), got {quantiles!r}.")
        super().__init__(len(q), hidden, dropout)
        self.register_buffer("quantiles", q)

    def config(self) -> dict:
        return super().config() | {"quantiles": self.quantiles.tolist()}

    def check_targets(self, targets, name: str = "targets") -> Tensor:
        return _as_float_targets(targets, name, 1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return pinball_loss(pred, target, self.quantiles.to(pred.dtype))


class Reconstruction(Head):
    """A decoder from the latent feature vector at a voxel to its intensity (``channels`` values).

    Trained on sampled voxels; the latent TT plus this decoder is an implicit representation
    of the volume that answers any voxel without reading it.

    Example:
        >>> import torch
        >>> head = Reconstruction()
        >>> head.build(16)
        >>> head(torch.rand(2, 100, 16)).shape
        torch.Size([2, 100])
    """

    task = "reconstruction"
    per_volume = False

    def __init__(self, channels: int = 1, hidden: int | None = 64):
        super().__init__(channels, hidden)
        self.channels = channels

    def config(self) -> dict:
        return {"task": self.task, "channels": self.channels, "hidden": self.hidden}

    def build(self, in_features: int) -> None:
        width = self.hidden or in_features
        self.net = nn.Sequential(
            nn.Linear(in_features, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, self.outputs),
        )

    def forward(self, z: Tensor) -> Tensor:
        out = super().forward(z)
        return out[..., 0] if self.channels == 1 else out

    def check_targets(self, targets, name: str = "targets") -> Tensor:
        return _as_float_targets(targets, name, 1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)


HEADS = {h.task: h for h in (Classification, Regression, QuantileRegression, Reconstruction)}


def head_from_config(config: dict) -> Head:
    """The head that ``config`` (from :meth:`Head.config`) describes.

    Example:
        >>> head_from_config(Classification(classes=4).config()).classes
        4
    """
    config = dict(config)
    task = config.pop("task", None)
    if task not in HEADS:
        raise ValueError(f"unknown head task {task!r}; expected one of {sorted(HEADS)}.")
    try:
        return HEADS[task](**config)
    except TypeError as err:
        raise ValueError(f"the {task} head cannot be built from {config}: {err}") from None
