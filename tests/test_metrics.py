"""Metrics against brute-force definitions: ROC AUC by pairwise counts, the pinball loss by its formula."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpic.train import accuracy, mean_absolute_error, pinball_loss, roc_auc


def brute_auc(scores: list[float], positive: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties counting one half, by counting all pairs."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=60))
def test_binary_auc_matches_pairwise_count_with_ties(pairs):
    scores, labels = [float(s) for s, _ in pairs], [int(y) for _, y in pairs]
    auc = roc_auc(torch.tensor(scores), torch.tensor(labels))
    if 0 < sum(labels) < len(labels):
        assert auc == pytest.approx(brute_auc(scores, [y == 1 for y in labels]), abs=1e-12)
    else:
        assert math.isnan(auc)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6, allow_nan=False, width=32), st.integers(0, 1)), min_size=2, max_size=80
    )
)
def test_binary_auc_matches_pairwise_count_on_floats(pairs):
    scores, labels = torch.tensor([s for s, _ in pairs]), torch.tensor([y for _, y in pairs])
    if 0 < labels.sum() < len(labels):
        expected = brute_auc(scores.tolist(), (labels == 1).tolist())
        assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
        two_columns = torch.stack([torch.zeros_like(scores), scores], dim=1)
        assert roc_auc(two_columns, labels) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 50), st.integers(3, 6), st.integers(0, 2**31 - 1))
def test_macro_auc_is_the_mean_of_per_class_auc(n, num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n, num_classes), generator=gen).double()  # few values: many ties
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    per_class = [
        brute_auc(scores[:, c].tolist(), (labels == c).tolist())
        for c in range(num_classes)
        if 0 < (labels == c).sum() < n
    ]
    auc = roc_auc(scores, labels)
    if per_class:
        assert auc == pytest.approx(sum(per_class) / len(per_class), abs=1e-12)
    else:
        assert math.isnan(auc)


def test_auc_of_perfect_inverted_and_constant_scores():
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    perfect = labels.double() + 0.1 * torch.arange(6)
    assert roc_auc(perfect, labels) == 1.0
    assert roc_auc(-perfect, labels) == 0.0
    assert roc_auc(torch.full((6,), 3.0), labels) == 0.5
    three = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 2]), 3).float()
    assert roc_auc(three, torch.tensor([0, 1, 2, 2])) == 1.0
    assert roc_auc(torch.ones(4, 3), torch.tensor([0, 1, 2, 2])) == 0.5


def test_auc_is_nan_without_both_classes_and_skips_one_sided_classes():
    assert math.isnan(roc_auc(torch.rand(5), torch.ones(5, dtype=torch.long)))
    assert math.isnan(roc_auc(torch.rand(0), torch.zeros(0, dtype=torch.long)))
    # class 2 never occurs: the macro average runs over classes 0 and 1 only
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.8, 0.2, 0.0]])
    assert roc_auc(scores, torch.tensor([0, 1, 0])) == 1.0


def test_auc_is_vectorised():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200_000,), generator=gen)
    scores = torch.randn(200_000, 5, generator=gen) + torch.nn.functional.one_hot(labels, 5)
    assert 0.7 < roc_auc(scores, labels) < 0.8  # Phi(1 / sqrt(2)) = 0.76


@pytest.mark.parametrize(
    ("scores", "labels", "name"),
    [
        (torch.rand(4), torch.tensor([0, 1, 2, 0]), "labels"),
        (torch.rand(4), torch.tensor([0, 1, 0]), "labels"),
        (torch.rand(4), torch.tensor([0.0, 1.0, 0.0, 1.0]), "labels"),
        (torch.rand(4, 3), torch.tensor([0, 1, 3, 0]), "labels"),
        (torch.rand(4, 3, 2), torch.tensor([0, 1, 1, 0]), "scores"),
        (torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]), "scores"),
    ],
)
def test_auc_rejects_bad_input(scores, labels, name):
    with pytest.raises(ValueError, match=name):
        roc_auc(scores, labels)


def direct_pinball(pred: torch.Tensor, target: torch.Tensor, quantiles: list[float]) -> float:
    total = 0.0
    for i in range(pred.shape[0]):
        for j, q in enumerate(quantiles):
            r = float(target[i] - pred[i, j])
            total += q * r if r >= 0 else (q - 1) * r
    return total / pred.numel()


def test_pinball_loss_matches_the_formula():
    gen = torch.Generator().manual_seed(2)
    pred, target = torch.randn(30, 3, generator=gen, dtype=torch.float64), torch.randn(30, generator=gen)
    quantiles = [0.1, 0.5, 0.95]
    loss = pinball_loss(pred, target, quantiles)
    assert loss.shape == () and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(direct_pinball(pred, target, quantiles), rel=1e-12)
    assert torch.equal(loss, pinball_loss(pred, target, torch.tensor(quantiles, dtype=torch.float64)))


def test_pinball_loss_is_minimised_at_the_empirical_quantile():
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn(101, generator=gen, dtype=torch.float64)
    ordered = sample.sort().values
    for q in (0.1, 0.37, 0.5, 0.9):
        # the loss is piecewise linear in a constant prediction c, so its minimum lies at a sample point
        losses = torch.stack([pinball_loss(c.expand(101, 1), sample, [q]) for c in ordered])
        assert int(losses.argmin()) == math.ceil(q * 101) - 1
        best = ordered[math.ceil(q * 101) - 1]
        least = pinball_loss(best.expand(101, 1), sample, [q])
        for c in (best - 1e-3, best + 1e-3, torch.quantile(sample, q)):
            assert least <= pinball_loss(c.expand(101, 1), sample, [q])


def test_pinball_loss_gradient():
    gen = torch.Generator().manual_seed(4)
    pred = torch.randn(12, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(12, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: pinball_loss(p, target, [0.2, 0.5, 0.8]), (pred,))


@pytest.mark.parametrize(
    ("shape", "target_shape", "quantiles", "name"),
    [
        ((4, 2), (4,), [0.0, 0.5], "quantiles"),
        ((4, 2), (4,), [0.5, 1.0], "quantiles"),
        ((4, 2), (4,), [0.5, 1.5], "quantiles"),
        ((4, 2), (4,), [0.5], "quantiles"),
        ((4, 2), (3,), [0.1, 0.5], "target"),
        ((4,), (4,), [0.5], "pred"),
    ],
)
def test_pinball_loss_rejects_bad_input(shape, target_shape, quantiles, name):
    with pytest.raises(ValueError, match=name):
        pinball_loss(torch.zeros(shape), torch.zeros(target_shape), quantiles)


def test_mean_absolute_error():
    assert mean_absolute_error(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])) == 1.5
    assert mean_absolute_error(torch.ones(2, 3), torch.ones(2, 3)) == 0.0
    with pytest.raises(ValueError, match="pred"):
        mean_absolute_error(torch.ones(3), torch.ones(3, 1))


def test_accuracy():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9], [0.4, 0.1, 0.5]])
    assert accuracy(scores, torch.tensor([1, 0, 2, 2])) == 1.0
    assert accuracy(scores, torch.tensor([1, 0, 0, 0])) == 0.5
    assert math.isnan(accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels"):
        accuracy(scores, torch.tensor([1, 0, 3, 0]))
    with pytest.raises(ValueError, match="labels"):
        accuracy(scores, torch.tensor([1, 0, 2]))
    with pytest.raises(ValueError, match="scores"):
        accuracy(scores[:, 0], torch.tensor([1, 0, 2, 2]))
