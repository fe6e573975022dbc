"""The framework-free monitor on analytic models whose memorized points are known."""

import math
import time

import pytest
import torch
from closed_forms import GaussianSubspace

from mmh_train import flipd
from mmh_train.data import inject_duplicates
from mmh_train.memorization import DD, NONE, OD
from mmh_train.integrations import MemorizationStopper
from mmh_train.monitor import MemorizationMonitor

PIECE = GaussianSubspace(dim=6, k=3, variances=[1.0, 1.0, 1.0], seed=0)


class PartialMemorizer:
    """Exact denoiser of (1 − Σw)·N(μ, UUᵀ) + Σ_j w·δ_{a_j}: snaps onto the atoms a_j, generalizes elsewhere."""

    def __init__(self, atoms: torch.Tensor, weight: float = 1e-3):
        self.atoms, self.weight = atoms.double(), weight

    def __call__(self, x, sigma):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        xd = x.double()
        log_manifold = math.log1p(-len(self.atoms) * self.weight) + PIECE.log_density(xd, s)
        d2 = ((xd[:, None, :] - self.atoms[None]) ** 2).sum(-1)
        log_atoms = math.log(self.weight) - d2 / (2 * s * s) - 0.5 * xd.shape[1] * math.log(2 * math.pi * s * s)
        w = torch.softmax(torch.cat([log_manifold[:, None], log_atoms], 1), 1)
        out = w[:, :1] * PIECE.denoiser(xd, sigma) + w[:, 1:] @ self.atoms
        return out.to(x.dtype)


def make_data(n=300, seed=1):
    return PIECE.sample(n, seed=seed).float()


def test_partial_memorizer_is_labelled_od_exactly_on_its_atoms():
    train = make_data()
    atoms_idx = torch.tensor([3, 17, 42, 100, 250])
    model = PartialMemorizer(train[atoms_idx])
    monitor = MemorizationMonitor(train, make_data(100, seed=2), n_train_probes=300, n_heldout_probes=50,
                                  sigma=0.05, reference=torch.full((300,), 3.0), every_n_steps=1)
    result = monitor.check(model, step=1)
    od = set(result.train_index[result.labels.label == OD].tolist())
    assert od == set(atoms_idx.tolist())
    assert (result.lid_train[atoms_idx] < 0.5).all()  # snapped: far below k = 3
    assert result.metrics["od_fraction"] == pytest.approx(5 / 300)
    assert result.metrics["lid_heldout"] == pytest.approx(3.0, abs=0.2)


def test_injected_duplicates_are_dd_and_memorized_singletons_are_od():
    base = make_data(300)
    dup = inject_duplicates(base, fraction=0.02, copies=2, generator=torch.Generator().manual_seed(0))
    train = dup.x
    singles = torch.tensor([5, 9])
    singles = singles[~dup.duplicated[singles]]
    atoms = torch.cat([train[dup.duplicated & ~dup.is_copy], train[singles]])
    monitor = MemorizationMonitor(train, n_train_probes=len(train), sigma=0.05,
                                  reference_options={"method": "lpca", "k": 20})
    result = monitor.check(PartialMemorizer(atoms), step=1)
    labels = torch.full((len(train),), -1)
    labels[result.train_index] = result.labels.label
    assert (labels[dup.duplicated] == DD).all()
    assert (labels[singles] == OD).all()
    others = torch.ones(len(train), dtype=torch.bool)
    others[dup.duplicated] = False
    others[singles] = False
    assert (labels[others] == NONE).float().mean() > 0.95  # LPCA misreads a few points; none are DD
    assert not (labels[others] == DD).any()


def test_budget_rotates_through_all_probes_and_history_is_dense():
    train, held = make_data(60), make_data(30, seed=3)
    monitor = MemorizationMonitor(train, held, n_train_probes=20, n_heldout_probes=10, sigma=[0.05, 0.2],
                                  max_probes_per_check=12, batch_size=5, reference=None, every_n_steps=10)
    checked = [monitor.maybe_check(PIECE.denoiser, step) for step in range(0, 31)]
    assert [c is not None for c in checked].count(True) == 3  # steps 10, 20, 30
    history = monitor.history_tensor()
    assert history.shape == (3, 2, 30)
    measured = ~torch.isnan(history[:, 0])
    assert measured.sum(1).tolist() == [12, 12, 12]
    assert measured.any(0).all()  # 36 slots over 30 probes: every probe measured at least once
    assert (measured[:, :20].sum(1) > 0).all() and (measured[:, 20:].sum(1) > 0).all()  # both sets every check
    direct = flipd(PIECE.denoiser, monitor.points()[measured[0]], 0.05)
    torch.testing.assert_close(history[0, 0][measured[0]], direct.float())


def test_check_leaves_global_rng_and_model_state_alone_and_state_round_trips():
    train = make_data(50)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 6)).train()
    monitor = MemorizationMonitor(train, n_train_probes=10, sigma=0.1, reference="data", every_n_steps=1,
                                  estimator_options={"n_probes": 2})
    rng = torch.get_rng_state()
    monitor.check(lambda x, s: net(x), step=1)
    monitor.check(lambda x, s: net(x), step=2)
    assert torch.equal(torch.get_rng_state(), rng) and net.training and torch.is_grad_enabled()
    clone = MemorizationMonitor(train, n_train_probes=10, sigma=0.1, reference="data", every_n_steps=1,
                                estimator_options={"n_probes": 2})
    clone.load_state_dict(monitor.state_dict())
    torch.testing.assert_close(clone.history_tensor(), monitor.history_tensor(), equal_nan=True)
    a, b = monitor.check(lambda x, s: net(x), step=3), clone.check(lambda x, s: net(x), step=3)
    torch.testing.assert_close(a.lid_train, b.lid_train, equal_nan=True)
    other = MemorizationMonitor(train, n_train_probes=10, sigma=0.1, seed=1)
    with pytest.raises(ValueError, match="same data, n_\\*_probes, sigma and seed"):
        other.load_state_dict(monitor.state_dict())


def test_result_at_an_earlier_check_reads_the_history_up_to_it():
    train = make_data(60)
    monitor = MemorizationMonitor(train, n_train_probes=60, sigma=0.05, reference=torch.full((60,), 3.0),
                                  every_n_steps=1)
    first = monitor.check(PIECE.denoiser, step=10)
    monitor.check(PartialMemorizer(train[:20]), step=20)  # now a third of the points snap onto atoms
    assert monitor.result().metrics["od_fraction"] == pytest.approx(20 / 60)
    earlier = monitor.result(at_step=10)
    assert earlier.step == 10 and earlier.metrics == first.metrics
    assert torch.equal(earlier.lid_train, first.lid_train)
    with pytest.raises(ValueError, match=r"at_step=15 is not the step of a check.*\[10, 20\]"):
        monitor.result(at_step=15)


def test_collapse_signal_needs_no_reference():
    train = make_data(40)
    monitor = MemorizationMonitor(train, n_train_probes=10, sigma=0.05, reference=None, early_checks=1)
    monitor.check(PIECE.denoiser, step=1)
    result = monitor.check(PartialMemorizer(train), step=2)  # from generalizing to memorizing everything
    assert result.labels is None
    assert result.metrics["collapse"] > 0.9


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n_train_probes": 500}, ValueError, "larger than the dataset \\(50 points\\)"),
    ({"max_probes_per_check": 0}, ValueError, "max_probes_per_check must be an integer ≥ 1"),
    ({"max_seconds_per_check": 0.0}, ValueError, "max_seconds_per_check must be a finite number of seconds > 0"),
    ({"sigma": -1.0}, ValueError, "sigma must be .auto. or one or more finite noise levels > 0"),
    ({"estimator": "lpca"}, ValueError, "estimator='lpca' is not known"),
    ({"reference": "heldout"}, ValueError, "needs heldout_data"),
    ({"reference": "truth"}, ValueError, "choose 'data', 'heldout'"),
    ({"reference_options": {"k": 50}}, ValueError, "pass reference_options=\\{'k': 16\\}"),
    ({"estimator_options": {"n_probez": 2}}, ValueError, r"unknown key\(s\) \['n_probez'\] for flipd.*'n_probes'"),
    ({"estimator": "normal_bundle", "estimator_options": {"n_probes": 2}}, ValueError, r"\['n_probes'\] for normal_bundle"),
    ({"label_options": {"od_margn": 1.0}}, ValueError, r"label_options has unknown key\(s\) \['od_margn'\].*'od_margin'"),
    ({"heldout_data": torch.zeros(5, 7)}, ValueError, r"held-out points have shape \(7,\) but training points have \(6,\)"),
])
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        MemorizationMonitor(make_data(50), **kwargs)


def test_every_probe_nan_is_a_clear_error():
    monitor = MemorizationMonitor(make_data(20), n_train_probes=5, sigma=0.1, reference=torch.full((20,), 3.0))
    with pytest.raises(ValueError, match="every probe is NaN"), pytest.warns(RuntimeWarning, match="5 of 5 probes"):
        monitor.check(lambda x, s: x * float("nan"), step=1)


class DivergesAt:
    """The exact denoiser of the piece until ``step``; NaN from then on (a model that diverged)."""

    def __init__(self, step: int):
        self.step, self.now = step, 0

    def __call__(self, x, sigma):
        out = PIECE.denoiser(x.double(), sigma).to(x.dtype)
        return out * float("nan") if self.now >= self.step else out


@pytest.mark.parametrize("all_probes", [True, False])
def test_a_diverged_model_gives_nan_metrics_a_warning_and_no_carried_forward_value(all_probes):
    train = make_data(40)
    monitor = MemorizationMonitor(train, make_data(20, seed=3), n_train_probes=40, n_heldout_probes=10, sigma=0.05,
                                  reference=torch.full((40,), 3.0), every_n_steps=1)
    model = DivergesAt(step=2)
    model.now = 1
    healthy = monitor.check(model, step=1)
    assert all(math.isfinite(v) for v in healthy.metrics.values())
    model.now = 2
    if not all_probes:  # only some probes diverge: a model that breaks on part of its inputs
        broken = model
        model = lambda x, s: torch.where((x[:, :1] > 0), broken(x, s), PIECE.denoiser(x.double(), s).to(x.dtype))
    with pytest.warns(RuntimeWarning, match=r"step 2: LID_θ is NaN or infinite for \d+ of 50 probes"):
        result = monitor.check(model, step=2)
    assert set(result.metrics) == set(healthy.metrics)
    assert all(math.isnan(v) for v in result.metrics.values())  # check_finite-style stopping fires on any
    went_bad = monitor.nonfinite[-1][:40]
    assert went_bad.any() and bool(torch.isnan(result.lid_train[went_bad]).all())  # nothing carried forward
    if result.labels is not None:
        assert not result.labels.measured[went_bad].any()
    stopper = MemorizationStopper("od_fraction")
    assert stopper.update(result.metrics, 2) and "not finite" in stopper.reason
    state = monitor.state_dict()
    again = MemorizationMonitor(train, make_data(20, seed=3), n_train_probes=40, n_heldout_probes=10, sigma=0.05,
                                reference=torch.full((40,), 3.0), every_n_steps=1)
    again.load_state_dict(state)
    assert all(math.isnan(v) for v in again.result().metrics.values())


def test_heldout_reference_compares_with_held_out_neighbours_and_never_says_dd():
    train, held = make_data(40), make_data(40, seed=5)
    atoms = torch.tensor([0, 1, 2])
    monitor = MemorizationMonitor(train, held, n_train_probes=40, n_heldout_probes=40, sigma=0.05,
                                  reference="heldout", reference_options={"k": 3})
    result = monitor.check(PartialMemorizer(train[atoms]), step=1)
    assert not (result.labels.label == DD).any()
    assert set(result.train_index[result.labels.label == OD].tolist()) == set(atoms.tolist())
    assert result.labels.lid_ref.sub(3.0).abs().max() < 0.5  # held-out neighbours read the manifold's k = 3


def test_fraction_of_training_budget_converts_training_time_into_probe_points():
    monitor = MemorizationMonitor(make_data(60), n_train_probes=40, sigma=0.1, reference=None, batch_size=5,
                                  max_fraction_of_training=0.1)
    assert monitor.check(PIECE.denoiser, step=1).n_measured == 5  # first check: one calibration batch
    monitor.seconds_per_point = 0.01  # as if measured
    monitor._last_check_end = time.perf_counter() - 1.0  # as if one second of training had passed
    assert 10 <= monitor.check(PIECE.denoiser, step=2).n_measured <= 12  # 10% of 1 s at 10 ms a point
    with pytest.raises(ValueError, match="max_fraction_of_training must lie in"):
        MemorizationMonitor(make_data(60), sigma=0.1, max_fraction_of_training=0.0)
