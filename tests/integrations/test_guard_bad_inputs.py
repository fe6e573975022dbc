"""Reliability: guard, monitor and copy-test inputs that used to pass silently or fail raw, each refused up front
with the fix named, or warned about (issue "Reliability, third round")."""

import os
import warnings

import pytest
import torch
from diffusers import DDPMScheduler
from lightning_toys import TimeMLP

import mmh_train
from mmh_train import MemorizationGuard, MemorizationMonitor, MemorizationStopper
from mmh_train.lid.flipd import NonFiniteLIDWarning
from mmh_train.remedies import PenaltySchedule

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
H = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))


def monitor(**kwargs):
    return MemorizationMonitor(X, H, sigma=0.5, every_n_steps=1, **kwargs)


@pytest.fixture
def denoiser():
    return mmh_train.diffusers_denoiser(TimeMLP(4), DDPMScheduler(num_train_timesteps=1000))


def test_a_step_counter_that_goes_back_is_refused(denoiser):
    guard = MemorizationGuard(monitor())
    guard.maybe_check(denoiser, 1)
    guard.maybe_check(denoiser, 2)
    guard.maybe_check(denoiser, 2)  # the same step again (accumulation, an epoch end) is fine
    with pytest.raises(ValueError, match="pass the global training step"):
        guard.maybe_check(denoiser, 1)  # a per-epoch counter restarting
    assert guard.monitor.steps == [1, 2]


def test_parts_attached_later_are_validated_like_the_constructors():
    with pytest.raises(ValueError, match="needs labels"):
        MemorizationGuard(monitor(reference=None)).attach(stopper=MemorizationStopper())
    with pytest.raises(ValueError, match="needs a stopper"):
        MemorizationGuard(monitor()).attach(restore_best_weights=True)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"stopper": "od_fraction"}, TypeError, r"Pass MemorizationStopper\('od_fraction'\)"),
    ({"weights": torch.ones(64)}, TypeError, "AdaptiveDuplicateWeights"),
    ({"penalty": 10.0}, TypeError, "PenaltySchedule"),
    ({"penalty": PenaltySchedule(), "penalty_subset": 0}, ValueError, "penalty_subset must be an integer ≥ 1"),
])
def test_constructor_parts_of_the_wrong_kind_name_the_fix(kwargs, error, match):
    with pytest.raises(error, match=match):
        MemorizationGuard(monitor(), **kwargs)


def test_a_state_for_a_part_the_guard_lacks_is_not_dropped_silently(denoiser):
    saved = MemorizationGuard(monitor(), stopper=MemorizationStopper())
    saved.maybe_check(denoiser, 1)
    with pytest.warns(RuntimeWarning, match="holds the stopper state .* has no stopper"):
        MemorizationGuard(monitor()).load_state_dict(saved.state_dict())


def test_a_truncated_monitor_state_and_an_empty_training_set_name_the_problem():
    state = monitor().state_dict()
    del state["train_index"]
    with pytest.raises(ValueError, match="lacks train_index: it is truncated"):
        monitor().load_state_dict(state)
    with pytest.raises(ValueError, match="train_data is empty"):
        MemorizationMonitor(torch.zeros(0, 4), H, sigma=0.5)


def test_flipd_warns_when_the_denoiser_returns_nan_and_the_monitor_reports_it_once(denoiser):
    with pytest.warns(NonFiniteLIDWarning, match="NaN or infinite at 4 of 4"):
        lid = mmh_train.flipd(lambda y, s: y * float("nan"), X[:4], 0.5)
    assert bool(torch.isnan(lid).all())
    broken = MemorizationMonitor(X, H, sigma=0.5, every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nan_where_large = lambda y, s: 0.9 * y + torch.where(y[:, :1] > 1.0, float("nan"), 0.0)  # some probes NaN
        broken.check(nan_where_large, 1)
    kinds = [type(w.message).__name__ for w in caught]
    assert "NonFiniteLIDWarning" not in kinds and any("step 1" in str(w.message) for w in caught)


def test_copy_tests_refuse_another_layout_and_a_control_that_is_the_samples():
    train = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    control = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    channels_last = train.permute(0, 2, 3, 1).repeat(2, 1, 1, 1)
    for test in (mmh_train.detect_copies, mmh_train.memorized_points):
        with pytest.raises(ValueError, match="another layout"):
            test(channels_last, train, control=control)
    samples = torch.randn(20, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="equal generated samples"):
        mmh_train.detect_copies(samples, train, control=samples[:10])
    near_copies = train + 1e-4 * torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    with pytest.warns(UserWarning, match="control points are copies of training points"):
        mmh_train.detect_copies(samples, train, control=near_copies)


def test_a_run_shorter_than_the_cadence_still_ends_with_a_check_and_its_report(tmp_path, denoiser):
    """The README's train_unconditional command checked every --checkpointing_steps and ended before the first:
    write_report raised "none has run yet". The report now checks the final weights first."""
    guard = MemorizationGuard(MemorizationMonitor(X, H, sigma=0.5, every_n_steps=100))
    for step in range(1, 6):
        guard.maybe_check(denoiser, step)
    assert guard.monitor.steps == []
    guard.write_report(tmp_path, train_data=X, heldout_data=H, n_samples=16)
    assert guard.monitor.steps == [5] and (tmp_path / "report.md").stat().st_size > 0
    assert guard.final_check() is None  # nothing new to check


def test_the_report_refuses_a_training_set_the_monitor_did_not_watch(tmp_path, denoiser):
    guard = MemorizationGuard(monitor())
    guard.maybe_check(denoiser, 1)
    with pytest.raises(ValueError, match="not the set the monitor watched"):
        guard.write_report(tmp_path, train_data=X + 1.0, heldout_data=H, n_samples=8)
    with pytest.raises(ValueError, match="train_data has shape"):
        guard.write_report(tmp_path, train_data=X[:, :2], heldout_data=H, n_samples=8)
    with pytest.raises(ValueError, match=r"train_data has shape \(60, 6\) but the monitor watched 64 points of shape "
                                         r"\(4,\)"):  # names train_data, not the samples
        guard.write_report(tmp_path, train_data=torch.randn(60, 6), heldout_data=H, n_samples=8)
    assert not (tmp_path / "report.md").exists()


def test_too_small_a_set_is_refused_in_the_users_terms():
    """reference='auto' on 9 points with 1 held out used to fail with "reference='data' estimates LID* from k
    neighbours", an option the user never set; 2 points got advice (k=2) that still failed."""
    with pytest.raises(ValueError, match="9 training points and 1 held-out points are too few .* Hold out more"):
        MemorizationMonitor(X[:9], H[:1], sigma=0.5)
    with pytest.raises(ValueError, match="needs at least 3 training points; got 2"):
        MemorizationMonitor(X[:2], None, sigma=0.5, reference="data")


def test_a_bare_diffusers_network_is_refused_with_the_wrapper_named():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 8),
                       norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    guard = MemorizationGuard(MemorizationMonitor(images, images[:8] + 1.0, sigma=0.5, every_n_steps=1))
    with pytest.raises(TypeError, match=r"bare network UNet2DModel; wrap it .* mmh_train.diffusers_denoiser"):
        guard.maybe_check(unet, 1)
    with pytest.raises(TypeError, match="expected a denoiser"):
        mmh_train.flipd(42, images[:2], 0.5)


def test_a_report_is_named_after_the_script_that_wrote_it(tmp_path, denoiser, monkeypatch):
    guard = MemorizationGuard(monitor())
    guard.maybe_check(denoiser, 1)
    monkeypatch.setattr("sys.argv", ["/home/me/train_unconditional.py", "--output_dir", "x"])
    guard.write_report(tmp_path, train_data=X, heldout_data=H, n_samples=8)
    assert (tmp_path / "report.md").read_text().startswith("# Memorization report — train_unconditional")


def test_an_audit_write_that_fails_during_training_warns_and_training_goes_on(tmp_path, denoiser, monkeypatch):
    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    audit = tmp_path / "audit.csv"
    guard = MemorizationGuard(monitor(), audit_path=audit)
    monkeypatch.setattr("mmh_train.integrations.guard.write_text_atomic", disk_full)
    with pytest.warns(RuntimeWarning, match="could not write the audit table .* training goes on"):
        assert guard.maybe_check(denoiser, 1) is not None
    with pytest.raises(OSError):  # a write the user asks for fails loudly
        guard.write_audit(audit)


def _place_a_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    return tmp_path / "file"


@pytest.mark.parametrize("where, match", [
    (lambda tmp: tmp, "is a folder; it names the file to write"),
    (lambda tmp: _place_a_file(tmp) / "sub" / "out", "is a file, not a folder"),
])
def test_unwritable_audit_and_best_weight_paths_are_refused_at_construction(tmp_path, where, match):
    path = where(tmp_path)
    with pytest.raises(ValueError, match=f"audit_path=.*{match}"):
        MemorizationGuard(monitor(), audit_path=path)
    with pytest.raises(ValueError, match=f"restore_best_weights=.*{match}"):
        MemorizationGuard(monitor(), stopper=MemorizationStopper(), restore_best_weights=path)
    MemorizationGuard(monitor(), audit_path=_place_a_file(tmp_path))  # an existing file is replaced, not refused


def test_a_report_folder_that_cannot_be_written_is_refused_before_the_final_check(tmp_path, denoiser):
    guard = MemorizationGuard(MemorizationMonitor(X, H, sigma=0.5, every_n_steps=100))
    guard.maybe_check(denoiser, 1)  # no check yet: write_report would check the final weights first
    for out_dir in (_place_a_file(tmp_path), tmp_path / "file" / "report"):
        with pytest.raises(ValueError, match="write_report's out_dir=.* is a file"):
            guard.write_report(out_dir, train_data=X, heldout_data=H, n_samples=8)
    assert guard.monitor.steps == []


def test_a_folder_without_write_permission_is_refused_up_front(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root: permissions do not bind, so the folder reads as locked instead
            access = os.access
            monkeypatch.setattr("mmh_train.io.os.access", lambda p, mode: p != locked and access(p, mode))
        with pytest.raises(ValueError, match="folder .*locked is not writable by this user"):
            MemorizationGuard(monitor(), audit_path=locked / "audit.csv")
        with pytest.raises(ValueError, match="restore_best_weights=.*not writable"):
            MemorizationGuard(monitor(), stopper=MemorizationStopper(), restore_best_weights=locked / "sub" / "w.pt")
    finally:
        locked.chmod(0o700)
