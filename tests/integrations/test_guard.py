"""The plain-loop guard and stopper in one process."""

import math

import pytest
import torch
from lightning_toys import ToyDiffusion, toy_data

from mmh_train.data import inject_duplicates_in_sample
from mmh_train.integrations import MemorizationGuard, MemorizationStopper
from mmh_train.monitor import MemorizationMonitor
from mmh_train.remedies import AdaptiveDuplicateWeights, PenaltySchedule, find_duplicate_groups


def test_stopper_tolerates_a_flat_zero_and_stops_after_patience():
    stopper = MemorizationStopper("od_fraction", patience=2)
    assert not any(stopper.update({"od_fraction": 0.0}, step) for step in range(10))  # 0 never "improves"
    assert not stopper.update({"od_fraction": 0.2}, 10)
    assert stopper.update({"od_fraction": 0.3}, 11) and stopper.stopped_step == 11
    assert "did not improve for 2 checks" in stopper.reason


def test_stopper_thresholds_finiteness_and_missing_metrics():
    assert MemorizationStopper("collapse", divergence_threshold=0.5).update({"collapse": 0.6}, 1)
    assert MemorizationStopper("collapse").update({"collapse": math.nan}, 1)
    assert not MemorizationStopper("collapse").update({}, 1)  # not available yet
    assert MemorizationStopper("lid_train", stopping_threshold=1.0).update({"lid_train": 1.5}, 1)


def test_stopper_state_round_trip_and_errors():
    stopper = MemorizationStopper("mmh/lid_gap", patience=3, tolerance=None)
    for step, gap in enumerate([0.1, 0.2, 0.3]):
        stopper.update({"lid_gap": gap}, step)
    clone = MemorizationStopper("lid_gap", patience=3, tolerance=None)
    clone.load_state_dict(stopper.state_dict())
    assert clone.wait_count == 2 and clone.update({"lid_gap": 0.4}, 4)
    with pytest.raises(ValueError, match="choose one of collapse"):
        MemorizationStopper("loss")
    with pytest.raises(ValueError, match="patience must be an integer"):
        MemorizationStopper(patience=-1)


def memorizing_setup():
    torch.manual_seed(0)
    sample, dup = inject_duplicates_in_sample(toy_data(4), fraction=0.5, copies=2, generator=torch.Generator().manual_seed(0))
    monitor = MemorizationMonitor(sample.x, sigma=0.1, every_n_steps=500, reference=torch.full((len(sample.x),), 2.0))
    return sample, dup, monitor


def train(guard, sample, max_steps=6000):
    """A diffusers-style plain loop with the guard's calls; returns the penalties it added."""
    model = ToyDiffusion()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    penalties = []
    for step in range(1, max_steps + 1):
        index = torch.randint(0, len(sample.x), (64,))
        loss = guard.weighted_loss(model.per_sample_loss(sample.x[index]), index)
        penalty = guard.penalty(model.denoiser(), sample.x[index], step)
        penalties.append(float(penalty))
        optimizer.zero_grad()
        (loss + penalty).backward()
        optimizer.step()
        guard.maybe_check(model.denoiser(), step)
        if guard.should_stop:
            break
    return penalties


def test_guard_reweights_duplicates_and_stops_a_memorizing_loop():
    sample, dup, monitor = memorizing_setup()
    guard = MemorizationGuard(monitor, weights=AdaptiveDuplicateWeights(find_duplicate_groups(sample.x)),
                              stopper=MemorizationStopper("od_fraction", patience=1))
    train(guard, sample)
    assert guard.should_stop and guard.stopper.stopped_step < 6000
    singleton = guard.weights.weights[~dup.duplicated][0]
    for g in dup.group[dup.duplicated].unique():  # a duplicate group (3 copies) weighs one sample
        torch.testing.assert_close(guard.weights.weights[dup.group == g].sum(), singleton)
    clone = MemorizationGuard(MemorizationMonitor(sample.x, sigma=0.1, every_n_steps=500,
                                                  reference=torch.full((len(sample.x),), 2.0)),
                              weights=AdaptiveDuplicateWeights(find_duplicate_groups(sample.x)),
                              stopper=MemorizationStopper("od_fraction", patience=1))
    clone.load_state_dict(guard.state_dict())
    assert clone.should_stop and clone.stopper.stopped_step == guard.stopper.stopped_step
    torch.testing.assert_close(clone.monitor.history_tensor(), guard.monitor.history_tensor(), equal_nan=True)


def test_guard_switches_the_penalty_on_when_od_appears():
    sample, _, monitor = memorizing_setup()
    guard = MemorizationGuard(monitor, penalty=PenaltySchedule(od_threshold=0.0, max_weight=0.01, ramp_steps=10))
    penalties = train(guard, sample, max_steps=3000)
    start = guard.schedule.activated_at
    assert start is not None and guard.schedule.target == 2.0
    assert all(p == 0.0 for p in penalties[:start]) and any(p > 0 for p in penalties[start:])


def test_guard_without_remedies_is_inert_and_refuses_a_non_monitor():
    guard = MemorizationGuard(MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None))
    loss = torch.tensor([1.0, 3.0])
    assert guard.weighted_loss(loss, None) == 2.0
    assert guard.penalty(lambda x, s: x, torch.zeros(2, 4), 1) == 0.0
    with pytest.raises(TypeError, match="MemorizationMonitor"):
        MemorizationGuard(object())


def test_guard_restores_the_weights_of_the_first_best_check(monkeypatch):
    from types import SimpleNamespace

    net = torch.nn.Linear(3, 3)
    monitor = MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None, every_n_steps=1)
    values = iter([0.3, 0.1, 0.1, 0.2, 0.4])  # best at step 2, tied at 3 (the first best wins), worse at 4
    monkeypatch.setattr(monitor, "check",
                        lambda denoiser, step, **kwargs: SimpleNamespace(metrics={"collapse": next(values)},
                                                                         labels=None))
    guard = MemorizationGuard(monitor, stopper=MemorizationStopper("collapse", patience=2),
                              restore_best_weights=True)
    for step in range(1, 6):
        with torch.no_grad():
            net.weight.fill_(float(step))  # "training" changes the weights between checks
        guard.maybe_check(net, step)
        if guard.should_stop:
            break
    assert guard.stopper.stopped_step == 4 and guard.stopper.best_step == 2 and guard.restored_step == 2
    assert torch.all(net.weight == 2.0), "the weights of the best check are loaded when training stops"
    assert guard.best.load()["networks"][0]["weight"].device.type == "cpu"
    clone = MemorizationGuard(MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None, every_n_steps=1),
                              stopper=MemorizationStopper("collapse", patience=2), restore_best_weights=True)
    clone.load_state_dict(guard.state_dict())
    assert clone.restored_step == 2 and clone.stopper.best_step == 2
    torch.testing.assert_close(clone.best.load()["networks"][0]["weight"], torch.full((3, 3), 2.0))


def test_guard_restore_best_weights_needs_a_stopper_and_a_module():
    with pytest.raises(ValueError, match="needs a stopper"):
        MemorizationGuard(MemorizationMonitor(toy_data(8).x, sigma=0.1, every_n_steps=1, reference=None),
                          restore_best_weights=True)
    guard = MemorizationGuard(MemorizationMonitor(toy_data(8).x, sigma=0.1, every_n_steps=1, reference=None),
                              stopper=MemorizationStopper("collapse"), restore_best_weights=True)
    with pytest.raises(TypeError, match="needs a denoiser around an nn.Module"):
        guard.maybe_check(lambda x, sigma: x, 1)


def test_stopper_on_lid_train_can_stop_by_default():
    """LID_θ is never below 0, so a tolerance of 0 would hold every check as healthy: lid_train gets none."""
    stopper = MemorizationStopper("lid_train", patience=2)
    assert stopper.tolerance is None and MemorizationStopper("od_fraction").tolerance == 0.0
    assert not stopper.update({"lid_train": 5.0}, 1)
    assert not stopper.update({"lid_train": 4.0}, 2)
    assert stopper.update({"lid_train": 3.0}, 3) and stopper.best_step == 1
    with pytest.raises(ValueError, match="tolerance='sometimes'"):
        MemorizationStopper("lid_gap", tolerance="sometimes")


def test_the_guard_writes_the_audit_table_of_its_latest_check(tmp_path):
    import csv

    from closed_forms import GaussianSubspace

    gauss = GaussianSubspace(6, 2, [1.0, 1.0], seed=0)
    train, heldout = gauss.sample(30, seed=1).float(), gauss.sample(30, seed=2).float()
    guard = MemorizationGuard(MemorizationMonitor(train, heldout, every_n_steps=10))
    with pytest.raises(RuntimeError, match="no check has run yet"):
        guard.write_audit(tmp_path / "audit.csv")
    den = lambda x, s: gauss.denoiser(x.double(), s.double()).float()  # noqa: E731
    for step in range(1, 21):
        guard.maybe_check(den, step)
    path = guard.write_audit(tmp_path / "audit.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 60 and {"lid@step10", "lid@step20", "label", "score", "rule"} <= set(rows[0])
    assert {r["rule"] for r in rows if r["split"] == "train"} == {"heldout_null"}


def test_the_best_check_is_the_latest_healthy_one():
    """Checks within tolerance (no OD label) are all healthy; the latest has trained most without memorizing, so
    it is the one kept and restored; a check with labels never becomes the best while a healthy one exists."""
    stopper = MemorizationStopper("od_fraction", patience=2)
    for step, value in ((1, 0.0), (2, 0.0), (3, 0.0), (4, 0.25), (5, 0.6)):
        stopped = stopper.update({"od_fraction": value}, step)
    assert stopped and stopper.best_step == 3 and stopper.stopped_step == 5
    worse_first = MemorizationStopper("od_fraction", patience=5)
    for step, value in ((1, 0.5), (2, 0.2), (3, 0.2), (4, 0.4)):  # never healthy: the first best wins
        worse_first.update({"od_fraction": value}, step)
    assert worse_first.best_step == 2


def test_the_guard_keeps_its_seed_without_a_penalty():
    guard = MemorizationGuard(MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None), seed=5)
    assert guard.seed == 5  # the report's default sampler draws with it
