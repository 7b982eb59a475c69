"""Datasets from CSV manifests, as training, evaluation and prediction open them: normalisation
by its recorded name, every volume checked up front, class ids aligned to a model's classes,
and the model the training options describe."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from cpic.nn import CPIC, Classification, QuantileRegression, Regression, make_sampler
from cpic.sources import VolumeSource, open_volume
from cpic.train.dataset import VolumeDataset
from cpic.train.distributed import current

#: the quantiles of a quantile-regression model unless told otherwise
QUANTILES = (0.1, 0.5, 0.9)


def normalize_option(value: str | None) -> str | None:
    """The ``normalize=`` of :func:`cpic.sources.open_volume` for a recorded setting.

    Example:
        >>> normalize_option("none"), normalize_option("range")
        (None, 'range')
    """
    return None if value in (None, "none") else value


def load_manifest(
    path, target: str | None, extra: Sequence[str], path_column: str, task: str, normalize: str | None
) -> VolumeDataset:
    """A manifest as a dataset, its volumes opened with ``normalize`` on first use.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.save(f"{d}/a.npy", np.zeros((4, 4, 4)))
        ...     _ = open(f"{d}/m.csv", "w").write("path,label\\na.npy,1\\n")
        ...     len(load_manifest(f"{d}/m.csv", "label", [], "path", "regression", "none"))
        1
    """
    return VolumeDataset.from_csv(
        path,
        target=target,
        extra=extra,
        path_column=path_column,
        task=task,
        normalize=normalize_option(normalize),
    )


def open_all(data: VolumeDataset, manifest: str) -> None:
    """Open every volume of ``data`` now, so that a bad one is named with its manifest row.

    Example:
        >>> import cpic
        >>> open_all(VolumeDataset([cpic.open_volume(torch.zeros(4, 4, 4))], targets=[0.0]), "m.csv")
    """
    for i in range(len(data)):
        try:
            data.source(i)
        except ValueError as err:
            raise ValueError(f"manifest {manifest!r}, row {i + 2}: {err}") from None


def align_classes(data: VolumeDataset, classes: list | None, name: str) -> None:
    """Re-number ``data``'s class ids to the model's class names ``classes`` (in place).

    Example:
        >>> import cpic
        >>> vols = [cpic.open_volume(torch.zeros(4, 4, 4)) for _ in range(2)]
        >>> data = VolumeDataset(vols, targets=[0, 1], classes=["b", "c"])
        >>> align_classes(data, ["a", "b", "c"], "test")
        >>> data.targets.tolist(), data.classes
        ([1, 2], ['a', 'b', 'c'])
    """
    if data.classes is None and classes is None:
        return
    if classes is None:
        raise ValueError(f"{name}: its labels are names {data.classes}; the model's classes are integer ids.")
    if data.classes is None:
        raise ValueError(f"{name}: its labels are integer ids; the model's classes are names {classes}.")
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise ValueError(f"{name}: class(es) {unknown} are not among the model's classes {classes}.")
    lookup = torch.tensor([classes.index(c) for c in data.classes])
    data.targets, data.classes = lookup[data.targets], list(classes)


def check_grid(model: CPIC, source: VolumeSource, name: str) -> None:
    """Refuse a volume whose grid or channels differ from the model's.

    Example:
        >>> import cpic
        >>> model = cpic.CPIC((8, 8, 8), Regression(), features=2, patch=3, rank=2)
        >>> try:
        ...     check_grid(model, cpic.open_volume(torch.zeros(4, 4, 4)), "v")
        ... except ValueError as err:
        ...     print(err)
        volume 'v' has grid (4, 4, 4); the model expects (8, 8, 8).
    """
    if tuple(source.shape) != tuple(model.grid_shape):
        raise ValueError(
            f"volume {name!r} has grid {tuple(source.shape)}; the model expects {model.grid_shape}."
        )
    if (source.channels or 1) != model.channels:
        raise ValueError(
            f"volume {name!r} has {source.channels or 1} channel(s); the model expects {model.channels}."
        )


def open_for(model: CPIC, paths: Sequence[str], normalize: str | None) -> list[VolumeSource]:
    """The volumes ``paths`` opened with the recorded ``normalize``, each checked to fit ``model``.

    Example:
        >>> import cpic
        >>> model = cpic.CPIC((4, 4, 4), Regression(), features=2, patch=3, rank=2)
        >>> len(open_for(model, [torch.zeros(4, 4, 4)], "none"))
        1
    """
    sources = []
    for path in paths:
        source = open_volume(path, normalize=normalize_option(normalize))
        check_grid(model, source, str(path))
        sources.append(source)
    return sources


def manifest_datasets(
    manifest: str,
    *,
    target: str = "label",
    extra: Sequence[str] = (),
    path_column: str = "path",
    task: str = "classification",
    normalize: str | None = None,
    val: float = 0.2,
    val_manifest: str | None = None,
    seed: int = 0,
) -> tuple[VolumeDataset, VolumeDataset | None, VolumeDataset]:
    """``(train, val, all)`` from ``manifest`` and a validation fraction ``val`` (0: none) or
    another manifest ``val_manifest``, its classes aligned to the training ones. Outside a
    distributed job every volume is opened now (a rank of a job opens only its own, in fit).

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for i in range(4):
        ...         np.save(f"{d}/{i}.npy", np.zeros((4, 4, 4)))
        ...     rows = "".join(f"{i}.npy,{i % 2}\\n" for i in range(4))
        ...     _ = open(f"{d}/m.csv", "w").write("path,label\\n" + rows)
        ...     train, val, data = manifest_datasets(f"{d}/m.csv", val=0.5)
        >>> len(train), len(val), len(data)
        (2, 2, 4)
    """
    options = (target, extra, path_column, task, normalize)
    data = load_manifest(manifest, *options)
    alone = current().world == 1
    if alone:
        open_all(data, manifest)
    if val_manifest:
        held = load_manifest(val_manifest, *options)
        if alone:
            open_all(held, val_manifest)
        if task == "classification":
            align_classes(held, data.classes, f"validation manifest {val_manifest!r}")
        return data, held, data
    if val == 0:
        return data, None, data
    train, held = data.split(val, seed=seed)
    return train, held, data


def head_for(task: str, data: VolumeDataset, quantiles: Sequence[float] = QUANTILES, name: str = "the data"):
    """The head of ``task`` for the labels of ``data`` (``name``: how an error names it).

    Example:
        >>> import cpic
        >>> vols = [cpic.open_volume(torch.zeros(4, 4, 4)) for _ in range(3)]
        >>> head_for("classification", VolumeDataset(vols, targets=[0, 1, 2])).classes
        3
    """
    if task == "regression":
        return Regression()
    if task == "quantile":
        return QuantileRegression(list(quantiles))
    count = len(data.classes) if data.classes is not None else int(data.targets.max()) + 1
    if count < 2:
        raise ValueError(f"{name} holds a single class; classification needs two or more.")
    return Classification(count)


def build_model(
    train: VolumeDataset,
    head: torch.nn.Module,
    *,
    extra_features: int = 0,
    seed: int = 0,
    sampler: str = "cross",
    read_budget: str | int | None = None,
    **options,
) -> CPIC:
    """The :class:`~cpic.nn.CPIC` with ``head`` and ``options`` for the grid and channels of the
    first volume of ``train``, reading with ``sampler`` (:data:`cpic.nn.SAMPLERS`) up to
    ``read_budget`` voxels per prediction (:func:`cpic.nn.make_sampler`); its initial weights
    depend on ``seed`` only (every rank of a distributed job builds the same model).

    Example:
        >>> import cpic
        >>> vols = [cpic.open_volume(torch.zeros(8, 8, 8)) for _ in range(2)]
        >>> build_model(VolumeDataset(vols, targets=[0.0, 1.0]), Regression(), rank=2, patch=3).grid_shape
        (8, 8, 8)
    """
    first = train.source(0)
    torch.manual_seed(seed)
    if sampler != "cross" or read_budget is not None:
        defaults = inspect.signature(CPIC).parameters
        features, patch = (options.get(k, defaults[k].default) for k in ("features", "patch"))
        options["reads"] = make_sampler(
            sampler, first.shape, read_budget, features=features, channels=first.channels or 1, patch=patch
        )
    return CPIC(
        first.shape, head, channels=first.channels or 1, extra_features=extra_features, seed=seed, **options
    )
