"""The guard as the one runtime: EMA weights, one copy of the best weights, a loop that honours stopping in one
line, the survey's duplicate groups, Lightning's metrics, and the plain-loop report in one call."""

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from diffusers.training_utils import EMAModel
from lightning_toys import ToyDiffusion, loader, toy_data, trainer

import mmh_train
from mmh_train.callbacks import DuplicateReweighting, LIDMonitor, LIDPenaltyController, MemorizationEarlyStopping, guard_of
from mmh_train.data import inject_duplicates_in_sample
from mmh_train.integrations import MemorizationGuard, MemorizationStopper
from mmh_train.monitor import MemorizationMonitor


class Mixed(mmh_train.callbacks.MemorizationMixin, ToyDiffusion):
    """The user-side pattern: weights by index and the penalty term, from the module's guard."""

    def training_step(self, batch, batch_idx):
        x0, _, index = batch
        return self.mmh_weighted_loss(self.per_sample_loss(x0), index) + self.mmh_lid_penalty(x0, index)


def scripted(monitor, values, metric="collapse"):
    """The monitor's checks return ``values`` of ``metric`` in turn (the stopping logic under test, not LID)."""
    values = iter(values)
    real = monitor.check

    def check(denoiser, step, **kwargs):
        real(denoiser, step, **kwargs)  # measures for real (EMA swap, side effects) ...
        return SimpleNamespace(metrics={metric: next(values)}, labels=None, step=step)  # ... and reports the script

    monitor.check = check
    return monitor


def test_until_stopped_ends_the_inner_loop_and_later_epochs_run_empty():
    guard = MemorizationGuard(MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None, every_n_steps=1))
    seen = []
    for epoch in range(3):
        for batch in guard.until_stopped(range(5)):
            seen.append((epoch, batch))
            if batch == 2 and epoch == 1:
                guard.should_stop = True
    assert seen == [(0, b) for b in range(5)] + [(1, 0), (1, 1), (1, 2)]


def test_checks_measure_the_ema_weights_and_leave_the_live_weights_bitwise():
    model = ToyDiffusion()
    ema = EMAModel(model.net.parameters(), decay=0.9)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the live weights move away from the EMA
    live = {k: v.clone() for k, v in model.net.state_dict().items()}
    sample = toy_data(16)
    monitor = MemorizationMonitor(sample.x, sigma=0.1, reference=None, every_n_steps=1, n_train_probes=8)
    guard = MemorizationGuard(monitor, ema=ema)
    result = guard.maybe_check(model.denoiser(), 1)
    assert all(torch.equal(v, live[k]) for k, v in model.net.state_dict().items())  # swapped back exactly
    twin = ToyDiffusion()
    with torch.no_grad():
        for p, s in zip(twin.net.parameters(), ema.shadow_params):
            p.copy_(s)
    direct = MemorizationMonitor(sample.x, sigma=0.1, reference=None, every_n_steps=1, n_train_probes=8)
    torch.testing.assert_close(result.lid_train, direct.check(twin.denoiser(), 1).lid_train)
    with pytest.raises(ValueError, match="EMAModel\\(unet.parameters\\(\\)\\)"):
        MemorizationGuard(monitor, ema=EMAModel(torch.nn.Linear(2, 2).parameters())).maybe_check(model.denoiser(), 2)


@pytest.mark.parametrize("where", ["memory", "file"])
def test_best_weights_are_kept_once_and_restored_into_the_networks_and_the_ema(tmp_path, where):
    model = ToyDiffusion()
    ema = EMAModel(model.net.parameters(), decay=0.5)
    monitor = scripted(MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None, every_n_steps=1,
                                           n_train_probes=4), [0.3, 0.1, 0.2, 0.4])
    path = tmp_path / "best.pt"
    guard = MemorizationGuard(monitor, stopper=MemorizationStopper("collapse", patience=2), ema=ema,
                              restore_best_weights=True if where == "memory" else path)
    kept = {}
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.net.parameters():
                p.add_(0.1)  # "training"
        ema.step(model.net.parameters())
        if step == 2:  # the best check: what must come back
            kept = {"net": {k: v.clone() for k, v in model.net.state_dict().items()},
                    "ema": [s.clone() for s in ema.shadow_params]}
        guard.maybe_check(model.denoiser(), step)
        if guard.should_stop:
            break
    assert guard.stopper.stopped_step == 4 and guard.restored_step == 2
    assert all(torch.equal(v, kept["net"][k]) for k, v in model.net.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, kept["ema"]))
    state = guard.state_dict()["stopper"]["best_weights"]
    assert (state["snapshot"] is None) == (where == "file")  # a file: the checkpoint holds only its path
    assert path.is_file() == (where == "file")


def test_weights_from_the_survey_are_the_groups_the_verdicts_call_duplicates():
    sample, dup = inject_duplicates_in_sample(toy_data(40), fraction=0.1, copies=3,
                                              generator=torch.Generator().manual_seed(0))
    monitor = MemorizationMonitor(sample.x, toy_data(40, seed=1).x, every_n_steps=1)
    guard = MemorizationGuard(monitor, weights="survey")
    assert torch.equal(guard.weights.groups.group, monitor.survey.groups.group)
    for g in dup.group[dup.duplicated].unique():  # a group of copies weighs one sample
        assert float(guard.weights.weights[dup.group == g].sum()) == pytest.approx(float(guard.weights.weights[~dup.duplicated][0]))
    with pytest.raises(ValueError, match="'survey' together with a monitor"):
        MemorizationGuard(weights="survey")


def test_the_stopper_reads_lightning_callback_metrics():
    stopper = MemorizationStopper("od_fraction", patience=1)
    assert not stopper.update({"mmh/od_fraction": torch.tensor(0.1), "train_loss": torch.tensor(1.0)}, 1)
    assert stopper.update({"mmh/od_fraction": torch.tensor(0.3)}, 2) and stopper.best_step == 1


def test_bad_combinations_are_refused_before_any_work():
    monitor = MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None)
    with pytest.raises(ValueError, match="needs labels"):
        MemorizationGuard(monitor, stopper=MemorizationStopper("od_fraction"))
    with pytest.raises(ValueError, match="no held-out data"):
        MemorizationGuard(monitor, stopper=MemorizationStopper("lid_gap"))
    with pytest.raises(ValueError, match="already has a monitor"):
        MemorizationGuard(monitor).attach(monitor=MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None))


def test_plain_loop_report_and_audit_in_one_call_each(tmp_path):
    sample, heldout = toy_data(32), toy_data(64, seed=1)
    model = ToyDiffusion()
    monitor = MemorizationMonitor(sample.x, heldout.x, every_n_steps=20, n_train_probes=16, n_heldout_probes=16)
    guard = MemorizationGuard(monitor, weights="survey", stopper=MemorizationStopper("od_fraction"),
                              restore_best_weights=True, audit_path=tmp_path / "audit.csv")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(1, 41):
        index = torch.randint(0, 32, (16,))
        loss = guard.weighted_loss(model.per_sample_loss(sample.x[index]), index)
        optimizer.zero_grad(), loss.backward(), optimizer.step()
        guard.maybe_check(model.denoiser(), step)
    rows = list(csv.DictReader(open(tmp_path / "audit.csv")))
    assert len(rows) == 32 and {"lid@step20", "lid@step40", "label", "duplicate_group"} <= set(rows[0])
    report = guard.write_report(tmp_path / "report", train_data=sample.x, heldout_data=heldout.x, n_samples=64)
    text = report.read_text()
    assert "held-out control" in text.lower() or "control" in text
    for png in ("lid_over_training", "lid_scatter", "samples"):
        assert (tmp_path / "report" / "plots" / f"{png}.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="Decode latents"):
        guard.write_report(tmp_path / "bad", sampler=torch.zeros(4, 7), train_data=sample.x)


def test_lightning_callbacks_configure_one_guard_per_module(tmp_path):
    sample, dup = inject_duplicates_in_sample(toy_data(32), fraction=0.1, copies=3,
                                              generator=torch.Generator().manual_seed(0))

    callbacks = [MemorizationEarlyStopping("mmh/collapse", patience=50, tolerance=None, restore_best_weights=True),
                 LIDPenaltyController(per_point=True), DuplicateReweighting(sample.x),  # any order
                 LIDMonitor(sample.x, toy_data(64, seed=1).x, every_n_steps=5, audit_path=False, n_train_probes=8)]
    model = Mixed()
    trainer(tmp_path, 10, callbacks).fit(model, loader(sample, batch_size=16))
    guard = guard_of(model)
    assert guard.monitor is callbacks[3].monitor and guard.stopper is callbacks[0].stopper
    assert guard.schedule is callbacks[1].schedule and guard.weights is callbacks[2].adaptive
    assert guard.monitor.steps == [5, 10] and len(guard.schedule.point_target) == len(sample.x)
    assert guard.penalty_sigma == guard.monitor.sigmas[0] and not math.isnan(guard.penalty_sigma)
    with pytest.raises(ValueError, match="use one LIDMonitor per Trainer"):  # two monitors on one module
        twice = [LIDMonitor(sample.x, sigma=0.1, audit_path=False, seed=1), LIDMonitor(sample.x, sigma=0.2, audit_path=False)]
        trainer(tmp_path / "b", 2, twice).fit(Mixed(), loader(sample))


def test_lightning_reweighting_without_data_takes_the_monitors_survey_groups(tmp_path):
    sample, dup = inject_duplicates_in_sample(toy_data(32), fraction=0.1, copies=3,
                                              generator=torch.Generator().manual_seed(0))

    reweight = DuplicateReweighting()  # no data: the streamed survey's groups
    monitor = LIDMonitor(sample.x, toy_data(64, seed=1).x, every_n_steps=5, audit_path=False, n_train_probes=8)
    model = Mixed()
    trainer(tmp_path, 5, [reweight, monitor]).fit(model, loader(sample, batch_size=16))
    assert guard_of(model).weights is reweight.adaptive
    assert torch.equal(reweight.adaptive.groups.group, monitor.monitor.survey.groups.group)
    for g in dup.group[dup.duplicated].unique():
        assert float(reweight.weights[dup.group == g].sum()) == pytest.approx(float(reweight.weights[~dup.duplicated][0]))
    with pytest.raises(ValueError, match="add an LIDMonitor"):
        trainer(tmp_path / "b", 1, [DuplicateReweighting()]).fit(Mixed(), loader(sample))


def test_lightning_restores_the_best_check_at_the_end_even_when_min_steps_trains_on(tmp_path):
    """The stop at step 4 cannot end training before min_steps=8: the best check (step 2) is restored at the end."""
    import lightning.pytorch as pl

    sample = toy_data(32)
    monitor = LIDMonitor(sample.x, sigma=0.1, reference=None, every_n_steps=2, audit_path=False, n_train_probes=4)
    scripted(monitor.monitor, [0.1, 0.3, 0.4, 0.5, 0.6])
    stopper = MemorizationEarlyStopping("mmh/collapse", patience=1, tolerance=None, restore_best_weights=True)
    kept = {}

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            if trainer.global_step == 2:
                kept.update({k: v.clone() for k, v in module.net.state_dict().items()})

    model = Mixed()
    trainer(tmp_path, 10, [Snapshot(), monitor, stopper], min_steps=8).fit(model, loader(sample, batch_size=16))
    assert guard_of(model).should_stop and stopper.restored_step == 2 and monitor.monitor.steps[-1] >= 8
    assert all(torch.equal(v, kept[k]) for k, v in model.net.state_dict().items())
    second = Mixed()  # a later fit without callbacks: the old guard does not drive the mixin
    trainer(tmp_path / "again", 1).fit(second, loader(sample, batch_size=16))
    assert guard_of(second) is None and second.mmh_weighted_loss(torch.tensor([1.0, 3.0]), None) == 2.0


def test_a_stop_at_the_threshold_keeps_that_check_as_the_best():
    stopper = MemorizationStopper("collapse", tolerance=None, stopping_threshold=0.05)
    assert not stopper.update({"collapse": 0.2}, 1)
    assert stopper.update({"collapse": 0.01}, 2) and stopper.improved and stopper.best_step == 2


def test_until_stopped_reads_no_batch_in_vain():
    guard = MemorizationGuard(MemorizationMonitor(toy_data(8).x, sigma=0.1, reference=None, every_n_steps=1))
    read = []

    def batches():
        for i in range(5):
            read.append(i)
            yield i

    for batch in guard.until_stopped(batches()):
        guard.should_stop = batch == 2
    assert read == [0, 1, 2]


def test_per_point_penalty_sizes_are_checked_before_any_work():
    sample, heldout = toy_data(32), toy_data(32, seed=1)
    monitor = MemorizationMonitor(sample.x, heldout.x, sigma=0.1)
    with pytest.raises(ValueError, match="built for 10 points"):
        MemorizationGuard(monitor, penalty=mmh_train.remedies.PenaltySchedule(n_points=10))
    with pytest.raises(ValueError, match="a monitor \\(LIDMonitor\\) that labels"):
        MemorizationGuard(MemorizationMonitor(sample.x, sigma=0.1, reference=None),
                          penalty=mmh_train.remedies.PenaltySchedule(per_point=True))
    guard = MemorizationGuard(monitor, penalty=mmh_train.remedies.PenaltySchedule(per_point=True))
    assert len(guard.schedule.point_target) == 32
