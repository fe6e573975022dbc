"""PenaltySchedule per point: only the points the monitor labels OD get the penalty, each with its own target."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmh_train.integrations import MemorizationGuard
from mmh_train.memorization import DD, NONE, OD
from mmh_train.monitor import MemorizationMonitor
from mmh_train.remedies import PenaltySchedule, penalty_on_rows


def _result(step, train_index, label, lid_ref, od_fraction, sigma=None):
    """A check's result as the schedule reads it; with ``sigma`` the verdicts carry the deciding σ (and then
    ``lid_ref`` plays the local null there)."""
    ref = torch.tensor(lid_ref, dtype=torch.float64)
    labels = SimpleNamespace(label=torch.tensor(label), lid_ref=ref, null=None if sigma is None else ref,
                             sigma=None if sigma is None else torch.tensor(sigma, dtype=torch.float64))
    return SimpleNamespace(step=step, train_index=torch.tensor(train_index), labels=labels,
                           metrics={"od_fraction": od_fraction})


def test_per_point_schedule_flags_points_stickily_with_their_own_targets():
    schedule = PenaltySchedule(n_points=10, max_weight=0.5)
    assert schedule.weight(5) == 0.0
    schedule.update(_result(100, [1, 4, 7], [OD, NONE, DD], [3.0, 2.0, 1.0], 1 / 3))
    assert schedule.activated_at == 100 and schedule.weight(101) == 0.5
    schedule.update(_result(200, [1, 4, 7], [OD, OD, NONE], [9.0, 2.5, 1.0], 2 / 3))  # 1 keeps its first target
    rows, target, sigma = schedule.targets_for(torch.tensor([4, 0, 1, 7, 1]), 5)
    assert rows.tolist() == [0, 2, 4] and target.tolist() == [2.5, 3.0, 3.0] and sigma is None
    clone = PenaltySchedule(n_points=10)
    clone.load_state_dict(schedule.state_dict())
    assert torch.equal(clone.point_target.isnan(), schedule.point_target.isnan())
    with pytest.raises(ValueError, match="needs the batch's dataset indices"):
        schedule.targets_for(None, 5)
    with pytest.raises(ValueError, match="n_points=10"):
        schedule.update(_result(300, [12], [OD], [1.0], 1.0))


def test_the_penalty_on_flagged_rows_is_their_hinge_summed_over_the_batch():
    """D(x; σ) = 0 collapses everything: FLIPD = ‖x‖²/σ² in closed form (trace 0)."""
    collapse = lambda x, sigma: 0.0 * x  # noqa: E731
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.5, 0.0]])
    sigma = 1.0
    rows, target = torch.tensor([1, 3]), torch.tensor([10.0, 1.0], dtype=torch.float64)
    value = penalty_on_rows(collapse, x, sigma, rows, target, 0.2, n_probes=None)
    expected = 0.2 * ((10.0 - 4.0) + (1.0 - 0.25)) / 4
    assert float(value) == pytest.approx(expected)
    assert float(penalty_on_rows(collapse, x, sigma, rows[:0], target[:0], 0.2)) == 0.0


def test_the_guard_penalises_only_flagged_batch_rows():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    monitor = MemorizationMonitor(x, sigma=1.0, reference=torch.full((6,), 2.0))  # a monitor that labels
    guard = MemorizationGuard(monitor, penalty=PenaltySchedule(n_points=6, max_weight=1.0), penalty_subset=None)
    assert guard.penalty_sigma == 1.0  # the monitor's primary σ
    guard.schedule.update(_result(10, [2, 5], [OD, OD], [50.0, 50.0], 1.0))
    collapse = lambda x, sigma: 0.0 * x  # noqa: E731
    batch = torch.tensor([0, 2, 3])
    value = guard.penalty(collapse, x[batch], 11, indices=batch)
    expected = (50.0 - float(x[2].pow(2).sum())) / 3
    assert float(value) == pytest.approx(expected, rel=1e-5)
    assert float(guard.penalty(collapse, x[[0, 1]], 11, indices=torch.tensor([0, 1]))) == 0.0


def test_per_point_targets_follow_the_noise_level_that_decided_each_verdict():
    schedule = PenaltySchedule(n_points=5)
    schedule.update(_result(10, [0, 3], [OD, OD], [4.0, 6.0], 1.0, sigma=[0.3, 0.8]))
    rows, target, sigma = schedule.targets_for(torch.tensor([3, 1, 0]), 3)
    assert rows.tolist() == [0, 2] and target.tolist() == [6.0, 4.0] and sigma.tolist() == [0.8, 0.3]
    collapse = lambda x, s: 0.0 * x  # noqa: E731  FLIPD = ‖x‖²/σ² per row, each at its own σ
    x = torch.tensor([[1.0, 1.0], [9.0, 9.0], [0.3, 0.0]])
    value = penalty_on_rows(collapse, x, sigma, rows, target, 1.0, n_probes=None)
    expected = ((6.0 - 2.0 / 0.64) + (4.0 - 0.09 / 0.09)) / 3
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_bad_uses_of_the_per_point_penalty_fail_early_and_leave_the_global_rng_alone():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    guard = MemorizationGuard(MemorizationMonitor(x, sigma=1.0, reference=torch.full((6,), 2.0)),
                              penalty=PenaltySchedule(n_points=6))
    with pytest.raises(ValueError, match="indices=index"):  # before any point is flagged, not later
        guard.penalty(lambda y, s: 0.0 * y, x, 1)
    with pytest.raises(ValueError, match="saved global, but the schedule is per point over 6 points"):
        PenaltySchedule(n_points=6).load_state_dict(PenaltySchedule().state_dict())
    state = torch.random.get_rng_state()
    penalty_on_rows(lambda y, s: 0.0 * y, x, 1.0, torch.arange(6), 9.0, 1.0, n_probes=None, subset=2)
    assert torch.equal(state, torch.random.get_rng_state())
