"""Tasks own the loss, the metrics and what an untrained model should score: check each against
an independent computation (torch's losses, scikit-learn's metrics)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, r2_score

from nnrecipe.errors import UserError
from nnrecipe.tasks import (
    Classification,
    MultiLabel,
    Regression,
    add_stats,
    plain_split,
    reduce_stats,
)


def summed(task, outputs, targets, batch=7):
    """Metrics from stats summed over uneven batches (as evaluate() and ranks add them)."""
    total = None
    for i in range(0, len(targets), batch):
        total = add_stats(total, task.batch_stats(outputs[i:i + batch], targets[i:i + batch]))
    return task.metrics(total)


def test_classification_metrics_and_init_expectations():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    task = Classification()
    m = summed(task, logits, y)
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert m["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    zero, _ = task.expected_init_loss(labels, 3, head_at_constant=False)
    prior, _ = task.expected_init_loss(labels, 3, head_at_constant=True)
    p = torch.tensor([0.7, 0.2, 0.1])
    assert zero == pytest.approx(math.log(3), rel=1e-5)
    assert prior == pytest.approx(-(p * p.log()).sum().item(), rel=1e-3)  # the prior's entropy
    # smoothing moves the training loss, never the evaluation loss
    smooth = Classification(label_smoothing=0.1)
    uniform = -logits.log_softmax(-1).mean(-1).mean()  # cross-entropy against 1/C
    assert smooth.loss(logits, y).item() == pytest.approx(
        (0.9 * task.loss(logits, y) + 0.1 * uniform).item(), rel=1e-5)
    assert summed(smooth, logits, y)["loss"] == pytest.approx(m["loss"])


def test_classification_ensemble_and_distillation():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    task = Classification()
    mean_p = (a.softmax(-1) + b.softmax(-1)) / 2
    assert torch.allclose(task.average([a, b]).softmax(-1), mean_p, atol=1e-6)
    assert task.distill_loss(a, a, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert task.distill_loss(a, b, 4.0).item() > 0
    assert task.objective_direction("val/acc") == "maximize"
    with pytest.raises(UserError, match="val/loss, val/acc"):
        task.objective_direction("val/mae")


def test_regression_reports_in_the_targets_units():
    g = torch.Generator().manual_seed(2)
    raw = 50 + 10 * torch.randn(200, 2, generator=g)  # the recipe's "mean of 50"
    task = Regression()
    task.fit_targets(raw[:150])
    y = task.encode(raw)
    assert y[:150].mean(0).abs().max() < 1e-4 and (y[:150].std(0) - 1).abs().max() < 1e-4
    out = y + 0.3 * torch.randn(200, 2, generator=g)
    m = summed(task, out, y)
    pred, truth = task.decode(out).double().numpy(), raw.double().numpy()
    assert m["mae"] == pytest.approx(np.abs(pred - truth).mean(), rel=1e-4)
    assert m["rmse"] == pytest.approx(np.sqrt(((pred - truth) ** 2).mean()), rel=1e-4)
    assert m["r2"] == pytest.approx(r2_score(truth, pred), rel=1e-4)
    # init well: the bias at the target mean gives the targets' variance (~1 standardised)
    at_mean, _ = task.expected_init_loss(y[:150], 2, head_at_constant=True)
    assert at_mean == pytest.approx(149 / 150, rel=1e-3)
    unscaled = Regression(standardize_targets=False)
    unscaled.fit_targets(raw[:150])
    zero, _ = unscaled.expected_init_loss(unscaled.encode(raw[:150]), 2, head_at_constant=False)
    assert zero > 2000  # ~50^2: why the recipe sets the final bias to the mean


def test_regression_refuses_silent_broadcasting():
    task = Regression()
    with pytest.raises(UserError, match="differ in shape"):
        task.loss(torch.zeros(8), torch.zeros(8, 1))  # [B] - [B, 1] would be [B, B]


def test_regression_split_spans_the_target_range():
    y = torch.arange(1000.0)
    train, val, test = Regression().split(y, [0.1, 0.1], seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(1000))
    for part in (val, test):  # one sample per decile at least: binned, not by luck
        assert len(np.unique(np.asarray(part) // 100)) == 10


def test_multilabel_map_and_f1_match_scikit_learn():
    g = torch.Generator().manual_seed(3)
    y = (torch.rand(300, 3, generator=g) < torch.tensor([0.5, 0.2, 0.05])).float()
    logits = 2 * y - 1 + 1.5 * torch.randn(300, 3, generator=g)
    task = MultiLabel(bins=100_000)
    m = summed(task, logits, y, batch=64)
    probs = torch.sigmoid(logits).numpy()
    assert m["map"] == pytest.approx(average_precision_score(y.numpy(), probs, average="macro"),
                                     abs=1e-3)
    assert m["f1"] == pytest.approx(f1_score(y.numpy(), probs >= 0.5, average="micro"), rel=1e-6)
    assert m["loss"] == pytest.approx(F.binary_cross_entropy_with_logits(logits, y).item(),
                                      rel=1e-5)
    freq = y.mean(0)
    assert torch.allclose(torch.sigmoid(task.constant_output(y, 3)), freq, atol=1e-4)
    entropy = -(freq * freq.log() + (1 - freq) * (1 - freq).log()).mean().item()
    assert task.expected_init_loss(y, 3, head_at_constant=True)[0] == pytest.approx(entropy,
                                                                                   rel=1e-3)


def test_output_contract_names_the_problem():
    task = Classification()
    assert task.output_problem(torch.zeros(4, 10), 4, 10) is None
    assert "wrong width" in task.output_problem(torch.zeros(4, 5), 4, 10)
    assert "[B, features]" in task.output_problem(torch.zeros(4, 2, 5), 4, 10)
    assert "floating point" in task.output_problem(torch.zeros(4, 10, dtype=torch.long), 4, 10)
    assert "tuple" in task.output_problem((torch.zeros(4, 10),), 4, 10)


def test_plain_split_is_a_partition_fixed_by_seed():
    a = plain_split(100, [0.15, 0.15], seed=0)
    b = plain_split(100, [0.15, 0.15], seed=0)
    assert [len(p) for p in a] == [70, 15, 15]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    with pytest.raises(UserError, match="too few"):
        plain_split(2, [0.5, 0.5], seed=0)


def test_stats_summed_over_ranks_in_one_collective_equal_one_pass():
    """What distributed evaluate() does: each rank sums its shard, one all-reduce adds them."""
    g = torch.Generator().manual_seed(4)
    y = (torch.rand(40, 3, generator=g) < 0.3).float()
    logits = torch.randn(40, 3, generator=g)
    task = MultiLabel(bins=50)
    shards = [task.batch_stats(logits[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    calls = []

    def fake_all_reduce_sum(flat):  # what 4 ranks' all_reduce(SUM) leaves on each of them
        calls.append(flat.shape)
        flat.copy_(sum(torch.cat([s[k].double().reshape(-1) for k in sorted(s)]) for s in shards))
        return flat

    reduced = reduce_stats(shards[0], fake_all_reduce_sum)
    assert len(calls) == 1
    assert task.metrics(reduced) == pytest.approx(summed(task, logits, y, batch=40))
