"""DuplicateReweighting, LIDPenaltyController, checkpoints and resume in a real Trainer."""

import csv

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_toys import ReproducibleToyDiffusion, ToyDiffusion, epoch_loader, loader, toy_data, trainer

from mmh_train.callbacks import (DuplicateReweighting, LIDMonitor, LIDPenaltyController, MemorizationEarlyStopping,
                                 MemorizationMixin, guard_of)
from mmh_train.data import inject_duplicates_in_sample


class Remedied(MemorizationMixin, ReproducibleToyDiffusion):
    """The user-side pattern: per-sample loss, weights by index, plus the penalty term."""

    def __init__(self, **kwargs):
        torch.manual_seed(0)  # identical initial weights for every instance
        super().__init__(**kwargs)

    def training_step(self, batch, batch_idx):
        x0, _, index = batch
        return self.mmh_weighted_loss(self.per_sample_loss(x0), index) + self.mmh_lid_penalty(x0, index)


def duplicated_sample(n=64):
    return inject_duplicates_in_sample(toy_data(n), fraction=0.1, copies=3, generator=torch.Generator().manual_seed(0))


def test_reweighting_gives_each_group_the_weight_of_one_sample(tmp_path):
    sample, dup = duplicated_sample()
    reweight = DuplicateReweighting(sample.x)
    model = Remedied()
    trainer(tmp_path, 5, [reweight]).fit(model, epoch_loader(sample))
    weights = guard_of(model).weights.weights
    singleton = weights[~dup.duplicated][0]
    for g in dup.group[dup.duplicated].unique():
        torch.testing.assert_close(weights[dup.group == g].sum(), singleton)  # a group weighs one sample
    assert weights.mean().item() == pytest.approx(1.0)


def test_adaptive_reweighting_downweights_dd_groups_once(tmp_path):
    sample, dup = duplicated_sample()
    monitor = LIDMonitor(sample.x, n_train_probes=len(sample.x), sigma=0.1, every_n_steps=2, audit_path=tmp_path / "a.csv",
                         reference="data", label_options={"dd_threshold": 0.5, "od_margin": 10.0})
    reweight = DuplicateReweighting(sample.x, dd_factor=0.5)
    model = Remedied()
    trainer(tmp_path, 6, [monitor, reweight]).fit(model, epoch_loader(sample))
    labels = monitor.last_result.labels
    dd_groups = dup.group[monitor.monitor.train_index[labels.label == 2]].unique()
    assert len(dd_groups) > 0  # od_margin=10: every duplicate the model reads below 10.5 is DD
    base = torch.ones(len(sample.x))
    members = torch.isin(dup.group, dup.group[dup.duplicated])
    base[members] = 1 / 4  # groups of 4 before the DD factor
    dd = torch.isin(dup.group, dd_groups)
    base[dd] *= 0.5  # applied once, though three checks saw the same labels
    torch.testing.assert_close(guard_of(model).weights.weights, base / base.mean())
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert {r["duplicate_group"] for r in rows if r["index"] in {str(i) for i in dup.sources.tolist()}}


def test_remedy_callbacks_without_the_mixin_are_refused(tmp_path):
    sample, _ = duplicated_sample()
    for callback in (DuplicateReweighting(sample.x), LIDPenaltyController(target=2.0)):
        with pytest.raises(TypeError, match="needs its mixin"):
            trainer(tmp_path, 1, [callback]).fit(ToyDiffusion(), loader(sample))


def test_penalty_controller_without_a_denoiser_is_refused_before_training(tmp_path):
    class NoDenoiser(Remedied):
        denoiser = None

    sample, _ = duplicated_sample()
    with pytest.raises(TypeError, match=r"LIDPenaltyController .*define `def denoiser\(self\)` on NoDenoiser"):
        trainer(tmp_path, 1, [LIDPenaltyController(target=2.0)]).fit(NoDenoiser(), loader(sample))


def test_weighted_loss_refuses_batches_without_indices(tmp_path):
    sample, _ = duplicated_sample()
    model = Remedied()
    assert model.mmh_weighted_loss(torch.tensor([1.0, 3.0]), None) == 2.0  # no callback: the plain mean
    trainer(tmp_path, 1, [DuplicateReweighting(sample.x)]).fit(model, epoch_loader(sample))
    with pytest.raises(ValueError, match="IndexedDataset"):
        model.mmh_weighted_loss(torch.ones(4), None)


def test_penalty_always_on_changes_training_and_off_does_not(tmp_path):
    sample = toy_data(16)
    plain = Remedied()
    trainer(tmp_path / "a", 5).fit(plain, epoch_loader(sample))
    off = Remedied()
    trainer(tmp_path / "b", 5, [LIDPenaltyController(target=2.0, od_threshold=1.0, sigma=0.1)]).fit(off, epoch_loader(sample))
    on = Remedied()
    controller = LIDPenaltyController(target=4.0, always_on=True, max_weight=1.0, subset=4, sigma=0.1)
    trainer(tmp_path / "c", 5, [controller]).fit(on, epoch_loader(sample))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), on.state_dict().values()))


def test_controller_switches_on_when_od_appears_and_takes_its_target_from_lid_star(tmp_path):
    sample = toy_data(4)
    monitor = LIDMonitor(sample.x, n_train_probes=4, sigma=0.1, every_n_steps=500, reference=sample.lid.float(),
                         audit_path=False)
    controller = LIDPenaltyController(max_weight=0.05, od_threshold=0.2, ramp_steps=100)
    trainer(tmp_path, 3000, [monitor, controller]).fit(Remedied(), loader(sample))
    assert controller.activated_at is not None and controller.target == pytest.approx(2.0)
    assert controller.weight == pytest.approx(0.05)


def make_callbacks(sample, tmp_path):
    return [LIDMonitor(sample.x, n_train_probes=20, sigma=0.1, every_n_steps=5, audit_path=tmp_path / "audit.csv",
                       reference="data", estimator_options={"n_probes": 2}),
            DuplicateReweighting(sample.x, dd_factor=0.5),
            LIDPenaltyController(target=2.0, always_on=True, max_weight=0.1, subset=4),
            MemorizationEarlyStopping("mmh/collapse", patience=100, tolerance=None)]


def test_early_stopping_on_a_metric_the_monitor_cannot_produce(tmp_path):
    sample = toy_data(32)
    for metric, options, match in (("mmh/lid_gap", {}, "no held-out data"),
                                   ("mmh/od_fraction", {"reference": None}, "labels nothing")):
        callbacks = [LIDMonitor(sample.x, sigma=0.1, audit_path=False, **options), MemorizationEarlyStopping(metric)]
        with pytest.raises(ValueError, match=match):
            trainer(tmp_path, 1, callbacks).fit(ToyDiffusion(), loader(sample))


def test_resume_from_a_mid_run_checkpoint_repeats_the_uninterrupted_run(tmp_path):
    sample, _ = duplicated_sample()
    full_model = Remedied()
    full = make_callbacks(sample, tmp_path / "full")
    trainer(tmp_path / "full", 20, full).fit(full_model, epoch_loader(sample))

    first = make_callbacks(sample, tmp_path / "resumed")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1)
    trainer(tmp_path / "resumed", 10, first + [ckpt], enable_checkpointing=True).fit(Remedied(), epoch_loader(sample))
    path = next((tmp_path / "ckpt").glob("*step=10*.ckpt"))
    stored = torch.load(path, weights_only=False)["callbacks"]
    for callback in first:
        assert callback.state_key in stored  # every callback's state goes through the real checkpoint
    resumed_model = Remedied()
    second = make_callbacks(sample, tmp_path / "resumed")
    trainer(tmp_path / "resumed", 20, second).fit(resumed_model, epoch_loader(sample), ckpt_path=str(path))

    for (name, a), (_, b) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(second[0].monitor.history_tensor(), full[0].monitor.history_tensor(), equal_nan=True)
    assert (tmp_path / "full" / "audit.csv").read_text() == (tmp_path / "resumed" / "audit.csv").read_text()
    torch.testing.assert_close(second[1].weights, full[1].weights)


def test_the_per_point_controller_penalises_only_points_labelled_od(tmp_path):
    """Known LID* = 2 and a model that memorizes 4 points: the points labelled OD, and only those, get a target
    (their LID*) at the penalty's σ, and the weight goes on; the state survives a checkpoint round trip."""
    sample = toy_data(4)
    monitor = LIDMonitor(sample.x, n_train_probes=4, sigma=0.1, every_n_steps=500, reference=sample.lid.float(),
                         audit_path=False)
    controller = LIDPenaltyController(max_weight=0.05, per_point=True)
    trainer(tmp_path, 2000, [monitor, controller]).fit(Remedied(), loader(sample))
    flagged_ever = set()
    for step in monitor.monitor.steps:
        result = monitor.monitor.result(at_step=step)
        flagged_ever |= set(result.train_index[result.labels.label == 1].tolist())
    targeted = set(torch.nonzero(torch.isfinite(controller.schedule.point_target)).flatten().tolist())
    assert flagged_ever and flagged_ever == targeted  # sticky: a point flagged at any check keeps its target
    assert controller.schedule.point_target[sorted(targeted)].tolist() == [2.0] * len(targeted)
    assert controller.sigma == 0.1 and controller.weight == pytest.approx(0.05)
    clone = LIDPenaltyController(max_weight=0.05, per_point=True)
    clone.schedule = controller.schedule.__class__(n_points=len(sample.x))
    clone.load_state_dict(controller.state_dict())
    assert torch.equal(torch.isfinite(clone.schedule.point_target), torch.isfinite(controller.schedule.point_target))
