"""LIDMonitor in a real Trainer: memorizing vs generalizing, side-effect freedom, audit table, state."""

import csv

import pytest
import torch
from lightning_toys import ToyDiffusion, loader, toy_data, trainer

from mmh_train.callbacks import LIDMonitor, MemorizationEarlyStopping
from mmh_train.parameterizations import as_denoiser


def run(tmp_path, n_train, steps, callbacks=(), seed=0):
    torch.manual_seed(seed)
    sample = toy_data(n_train)
    model = ToyDiffusion()
    t = trainer(tmp_path, steps, callbacks)
    t.fit(model, loader(sample, seed=seed))
    return model, sample


@pytest.mark.parametrize("n_train, expect_od", [(4, True), (2000, False)])
def test_few_points_are_labelled_od_and_many_are_not(tmp_path, n_train, expect_od):
    sample = toy_data(n_train)
    monitor = LIDMonitor(sample.x, toy_data(200, seed=1).x, n_train_probes=min(n_train, 32), n_heldout_probes=32,
                         sigma=0.1, every_n_steps=1500, reference=sample.lid.float(), audit_path=tmp_path / "audit.csv")
    run(tmp_path, n_train, 3000, [monitor])
    metrics = monitor.last_result.metrics
    if expect_od:
        assert metrics["od_fraction"] >= 0.75, metrics
        assert metrics["lid_gap"] > 0.5, metrics  # held-out points keep their dimension
    else:
        assert metrics["od_fraction"] <= 0.1, metrics
        assert abs(metrics["lid_train"] - 2.0) < 0.5, metrics
    rows = list(csv.DictReader(open(tmp_path / "audit.csv")))
    assert len(rows) == len(monitor.monitor.train_index) + 32
    assert {"index", "split", "lid@step1500", "lid@step3000", "lid_ref", "label"} <= set(rows[0])


def test_monitor_on_vs_off_gives_bitwise_identical_weights(tmp_path):
    plain, _ = run(tmp_path / "off", 64, 60)
    sample = toy_data(64)
    monitor = LIDMonitor(sample.x, n_train_probes=16, sigma=0.1, every_n_steps=7, audit_path=False,
                         estimator_options={"n_probes": 2})
    monitored, _ = run(tmp_path / "on", 64, 60, [monitor])
    assert len(monitor.monitor.steps) == 8
    for (name, a), (_, b) in zip(plain.state_dict().items(), monitored.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("second", ["same", "other", "itself"])
def test_a_second_monitor_is_refused_before_any_step_with_the_fix_named(tmp_path, second):
    """Same options (Lightning's duplicate state key), other options, or one instance twice: one message."""
    sample = toy_data(32)
    first = LIDMonitor(sample.x, sigma=0.1, audit_path=False)
    other = {"same": lambda: LIDMonitor(sample.x, sigma=0.1, audit_path=False), "itself": lambda: first,
             "other": lambda: LIDMonitor(sample.x, sigma=0.2, seed=1, audit_path=False)}[second]()
    model = ToyDiffusion()
    t = trainer(tmp_path, 2, [first, other])  # Lightning's own state-key check does not fire in Trainer(...)
    with pytest.raises(ValueError, match=r"2 LIDMonitor callbacks; use one LIDMonitor per Trainer.*sigma=\[s1, s2"):
        t.fit(model, loader(sample))
    assert t.global_step == 0 and first.guard is None


def test_the_monitor_state_round_trips_through_a_real_checkpoint_under_its_state_key(tmp_path):
    sample = toy_data(32)
    monitor = LIDMonitor(sample.x, n_train_probes=8, sigma=0.1, every_n_steps=2, audit_path=False,
                         estimator_options={"n_probes": 1})
    t = trainer(tmp_path, 4, [monitor])
    t.fit(ToyDiffusion(), loader(sample))
    t.save_checkpoint(tmp_path / "a.ckpt")
    stored = torch.load(tmp_path / "a.ckpt", weights_only=False)["callbacks"][monitor.state_key]
    assert stored["steps"] == [2, 4]
    fresh = LIDMonitor(sample.x, n_train_probes=8, sigma=0.1, every_n_steps=2, audit_path=False,
                       estimator_options={"n_probes": 1})
    trainer(tmp_path, 4, [fresh]).fit(ToyDiffusion(), loader(sample), ckpt_path=tmp_path / "a.ckpt")
    assert fresh.monitor.steps == [2, 4]
    torch.testing.assert_close(fresh.monitor.history_tensor(), monitor.monitor.history_tensor(), equal_nan=True)
    t.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)  # weights only: no callback state written
    assert "callbacks" not in torch.load(tmp_path / "w.ckpt", weights_only=False)


def test_module_without_denoiser_is_refused(tmp_path):
    class NoDenoiser(ToyDiffusion):
        denoiser = None

    sample = toy_data(32)
    t = trainer(tmp_path, 2, [LIDMonitor(sample.x, sigma=0.1, audit_path=False)])
    with pytest.raises(TypeError, match="define `def denoiser\\(self\\)`"):
        t.fit(NoDenoiser(), loader(sample))


def test_early_stopping_stops_a_memorizing_run(tmp_path):
    sample = toy_data(4)
    monitor = LIDMonitor(sample.x, n_train_probes=4, sigma=0.1, every_n_steps=250, reference=sample.lid.float(),
                         audit_path=False)
    stopper = MemorizationEarlyStopping("mmh/od_fraction", patience=1, restore_best_weights=True)
    model, _ = run(tmp_path, 4, 6000, [monitor, stopper])
    stopped_at = monitor.monitor.steps[-1]
    assert stopped_at < 6000 and stopper.stopping_reason_message is not None
    assert monitor.last_result.metrics["od_fraction"] > 0
    best = stopper.best_weights  # one state_dict per network of the denoiser, kept once by the guard
    networks = as_denoiser(model.denoiser()).modules()
    assert best is not None and len(best) == len(networks)
    assert all(torch.equal(best[0][k], v) for k, v in networks[0].state_dict().items())
    # the restored weights are named by their check, and the monitor reads its labels as they were there
    assert stopper.restored_step == stopper.best_step and stopper.best_step in monitor.monitor.steps
    assert stopper.best_step < stopped_at
    then = monitor.monitor.result(at_step=stopper.best_step)
    assert then.step == stopper.best_step and then.metrics["od_fraction"] < monitor.last_result.metrics["od_fraction"]
    state = stopper.state_dict()
    fresh = MemorizationEarlyStopping("mmh/od_fraction", patience=1, restore_best_weights=True)
    fresh.load_state_dict(state)
    assert fresh.best_step == stopper.best_step


def test_early_stopping_without_a_monitor_is_refused(tmp_path):
    with pytest.raises(ValueError, match="add mmh_train.callbacks.LIDMonitor"):
        run(tmp_path, 8, 2, [MemorizationEarlyStopping()])


def test_early_stopping_argument_errors():
    with pytest.raises(ValueError, match="choose one of mmh/collapse"):
        MemorizationEarlyStopping("val_loss")
    with pytest.raises(ValueError, match="choose 'min' or 'max'"):
        MemorizationEarlyStopping(mode="down")


def test_default_epoch_cadence_checks_and_logs_at_every_epoch_end(tmp_path):
    sample = toy_data(64)
    monitor = LIDMonitor(sample.x, sigma=0.1, audit_path=False)  # every_n_epochs=1 by default
    t = trainer(tmp_path, 25, [monitor], logger=True)
    run_model = ToyDiffusion()
    t.fit(run_model, loader(sample))  # 10 batches per epoch; max_steps ends a partial third epoch at 25
    assert monitor.monitor.steps == [10, 20, 25]
    assert "mmh/lid_train" in t.callback_metrics


def test_a_cadence_longer_than_training_is_warned_about(tmp_path):
    sample = toy_data(16)
    monitor = LIDMonitor(sample.x, toy_data(32, seed=1).x, sigma=0.1, every_n_steps=100, audit_path=False)
    with pytest.warns(RuntimeWarning, match=r"every_n_steps=100\) with Trainer\(max_steps=6\): no check will run"):
        run(tmp_path, 16, 6, [monitor])
