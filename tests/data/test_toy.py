"""Tests for mmh_train.data.toy: shapes, reproducibility, true LID, geometry, the mixture denoiser."""

import math

import pytest
import torch

from mmh_train.data import (AffineMixtureSpec, ManifoldSample, ToyDataset, affine_mixture, lollipop,
                            sphere, squiggly_mixture)

GENERATORS = {
    "affine": lambda n, **kw: affine_mixture(n, **kw),
    "squiggly": lambda n, **kw: squiggly_mixture(n, **kw),
    "sphere": lambda n, **kw: sphere(n, **kw),
    "lollipop": lambda n, **kw: lollipop(n, ambient_dim=3, **kw),
}


def _seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_labels(name, dtype):
    s = GENERATORS[name](101, generator=_seeded(), dtype=dtype)
    assert isinstance(s, ManifoldSample)
    n, d = s.x.shape
    assert n == 101 == len(s) and d == s.ambient_dim
    assert s.x.dtype == dtype and s.lid.dtype == torch.long and s.component.dtype == torch.long
    assert s.lid.shape == s.component.shape == (101,)
    assert torch.isfinite(s.x).all()
    assert torch.equal(s.lid, torch.tensor(s.component_dims)[s.component])


@pytest.mark.parametrize("name", GENERATORS)
def test_reproducible_and_global_rng_untouched(name):
    state = torch.get_rng_state()
    a = GENERATORS[name](64, generator=_seeded(3))
    b = GENERATORS[name](64, generator=_seeded(3))
    c = GENERATORS[name](64, generator=_seeded(4))
    d0, d1 = GENERATORS[name](64), GENERATORS[name](64, generator=_seeded(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x, b.x) and torch.equal(a.lid, b.lid) and torch.equal(a.component, b.component)
    assert not torch.equal(a.x, c.x)
    assert torch.equal(d0.x, d1.x)  # None means a fresh manual_seed(0) generator


def test_dtypes_agree_up_to_rounding():
    a = affine_mixture(50, generator=_seeded(), dtype=torch.float64)
    b = affine_mixture(50, generator=_seeded(), dtype=torch.float32)
    torch.testing.assert_close(a.x.float(), b.x)


def test_component_counts_follow_weights_and_points_are_shuffled():
    s = affine_mixture(100, dims=(1, 2, 3), ambient_dim=5, weights=(0.5, 0.3, 0.2), generator=_seeded())
    assert torch.bincount(s.component).tolist() == [50, 30, 20]
    assert not torch.equal(s.component, torch.sort(s.component).values)


def test_affine_pieces_have_rank_k_and_expected_geometry():
    dims = (2, 4, 8)
    s = affine_mixture(900, dims=dims, ambient_dim=10, separation=5.0, scale=(0.5, 1.0, 2.0), generator=_seeded())
    spec = s.spec
    assert isinstance(spec, AffineMixtureSpec) and spec.dims == dims
    for i, k in enumerate(dims):
        pts = s.x[s.component == i].double()
        sv = torch.linalg.svdvals(pts - pts.mean(0))
        assert int((sv > 1e-4 * sv[0]).sum()) == k
        u = spec.bases[i]
        torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=torch.float64))
        # points lie on the affine subspace through the centre
        resid = (pts - spec.means[i]) - (pts - spec.means[i]) @ u @ u.T
        assert resid.abs().max() < 1e-5
    dist = torch.cdist(spec.means, spec.means)
    off = dist[~torch.eye(3, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, 5.0 * 2.0))  # separation × largest std
    torch.testing.assert_close(spec.means.mean(0), torch.zeros(10, dtype=torch.float64))
    torch.testing.assert_close(spec.variances[2], torch.full((8,), 4.0, dtype=torch.float64))


def test_default_affine_mixture_is_roughly_unit_scale():
    s = affine_mixture(3000)
    std = s.x.std(0)
    assert 0.5 < float(std.mean()) < 2.0


def test_more_centres_than_dimensions_keep_their_distance():
    s = affine_mixture(40, dims=(1, 1, 1, 1), ambient_dim=2, separation=4.0, generator=_seeded())
    dist = torch.pdist(s.spec.means)
    assert float(dist.min()) == pytest.approx(4.0)


def _local_pca_dims(points: torch.Tensor, centre: torch.Tensor, k_nn: int = 50, share: float = 0.95) -> int:
    """Number of principal directions needed to explain `share` of the neighbourhood's variance."""
    nn = points[torch.cdist(centre[None], points)[0].argsort()[:k_nn]]
    ev = torch.linalg.eigvalsh(torch.cov(nn.T)).flip(0)
    return int((ev.cumsum(0) / ev.sum() < share).sum()) + 1


def test_squiggly_pieces_are_locally_k_dimensional():
    dims = (1, 2, 3)
    s = squiggly_mixture(6000, dims=dims, ambient_dim=8, amplitude=0.5, frequency=1.5,
                         generator=_seeded(), dtype=torch.float64)
    for i, k in enumerate(dims):
        pts = s.x[s.component == i]
        found = [_local_pca_dims(pts, pts[j]) for j in range(0, 40, 4)]
        assert sorted(found)[len(found) // 2] == k, (k, found)  # median over 10 anchor points
        # ... while the piece as a whole is curved: it spans more than k directions
        sv = torch.linalg.svdvals(pts - pts.mean(0))
        assert int((sv > 1e-3 * sv[0]).sum()) > k


def test_squiggly_is_a_graph_over_its_tangent_coordinates():
    s = squiggly_mixture(300, dims=(2, 5), ambient_dim=7, amplitude=0.7, frequency=3.0, scale=0.5,
                         latent="gaussian", generator=_seeded(), dtype=torch.float64)
    p = s.params
    for i in range(2):
        pts = s.x[s.component == i]
        z = (pts - p["means"][i]) @ p["tangents"][i] / 0.5
        rebuilt = p["means"][i] + 0.5 * (z @ p["tangents"][i].T + 0.7 * torch.sin(3.0 * z @ p["frequencies"][i].T)
                                         @ p["normals"][i].T)
        torch.testing.assert_close(rebuilt, pts)
        a, b = p["tangents"][i], p["normals"][i]
        assert (a.T @ b).abs().max() < 1e-12  # orthogonal subspaces: the map is injective


@pytest.mark.parametrize("dim, ambient", [(1, 2), (2, 10), (5, 6)])
def test_sphere_norms_and_dimension(dim, ambient):
    s = sphere(500, dim=dim, ambient_dim=ambient, radius=2.5, generator=_seeded(), dtype=torch.float64)
    torch.testing.assert_close(s.x.norm(dim=1), torch.full((500,), 2.5, dtype=torch.float64))
    sv = torch.linalg.svdvals(s.x)
    assert int((sv > 1e-8 * sv[0]).sum()) == dim + 1
    assert (s.lid == dim).all()


@pytest.mark.parametrize("ambient", [2, 5])
def test_lollipop_pieces(ambient):
    s = lollipop(400, ambient_dim=ambient, generator=_seeded(), dtype=torch.float64)
    assert s.component_dims == (2, 1, 0)
    assert torch.bincount(s.component).tolist() == [240, 120, 40]
    p = s.params
    candy, stick, point = (s.x[s.component == i] for i in range(3))
    assert ((candy - p["candy_centre"]).norm(dim=1) <= p["candy_radius"] + 1e-12).all()
    seg = p["stick_end"] - p["stick_start"]
    t = (stick - p["stick_start"]) @ seg / seg.dot(seg)
    assert ((t >= 0) & (t <= 1)).all()
    torch.testing.assert_close(stick, p["stick_start"] + t[:, None] * seg)
    assert (point == p["point"]).all() and (s.lid[s.component == 2] == 0).all()
    if ambient == 2:
        torch.testing.assert_close(p["basis"], torch.eye(2, dtype=torch.float64))


def _gaussian_posterior_mean(mu, cov, x, s2):
    """E[x0 | x] for x0 ~ N(mu, cov), x = x0 + σε: mu + cov (cov + σ²I)⁻¹ (x − mu)."""
    d = mu.shape[0]
    return mu + (x - mu) @ torch.linalg.solve(cov + s2 * torch.eye(d, dtype=cov.dtype), cov).T


def test_denoiser_single_piece_matches_closed_form():
    g = _seeded(7)
    u = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=torch.float64))[0]
    lam = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    mu = torch.randn(6, generator=g, dtype=torch.float64)
    spec = AffineMixtureSpec(means=mu[None], bases=(u,), variances=(lam,), weights=torch.ones(1, dtype=torch.float64))
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    sigma = torch.linspace(0.05, 2.0, 20, dtype=torch.float64)
    out = spec.denoiser(x, sigma)
    s2 = sigma[:, None] ** 2
    expected = mu + ((x - mu) @ u * lam / (lam + s2)) @ u.T
    torch.testing.assert_close(out, expected)
    cov = u @ torch.diag(lam) @ u.T
    for b in (0, 7, 19):
        torch.testing.assert_close(out[b], _gaussian_posterior_mean(mu, cov, x[b], s2[b, 0]))


def test_denoiser_of_far_apart_pieces_is_the_own_piece_denoiser():
    s = affine_mixture(300, dims=(2, 4, 8), ambient_dim=10, separation=8.0, generator=_seeded(),
                       dtype=torch.float64)
    spec, sigma = s.spec, 0.17
    noisy = s.x + sigma * torch.randn(s.x.shape, generator=_seeded(9), dtype=torch.float64)
    out = spec.denoiser(noisy, sigma)
    for i in range(3):
        rows = s.component == i
        mu, u, lam = spec.means[i], spec.bases[i], spec.variances[i]
        own = mu + ((noisy[rows] - mu) @ u * lam / (lam + sigma**2)) @ u.T
        torch.testing.assert_close(out[rows], own)
    post = spec.log_posterior(noisy, sigma).exp()
    assert torch.equal(post.argmax(1), s.component)


def test_denoiser_matches_brute_force_posterior_for_overlapping_pieces():
    s = affine_mixture(10, dims=(1, 2, 3), ambient_dim=4, separation=0.5, weights=(0.2, 0.3, 0.5),
                       generator=_seeded(), dtype=torch.float64)
    spec = s.spec
    x = torch.randn(16, 4, generator=_seeded(5), dtype=torch.float64)
    sigma = torch.full((16,), 0.6, dtype=torch.float64)
    covs = [u @ torch.diag(lam) @ u.T for u, lam in zip(spec.bases, spec.variances)]
    eye = torch.eye(4, dtype=torch.float64)
    logp = torch.stack([
        torch.distributions.MultivariateNormal(mu, cov + 0.36 * eye).log_prob(x) + w.log()
        for mu, cov, w in zip(spec.means, covs, spec.weights)], dim=1)
    w = torch.softmax(logp, dim=1)
    assert float(w.min()) > 1e-3  # the pieces really overlap at this σ
    torch.testing.assert_close(spec.log_posterior(x, sigma), torch.log_softmax(logp, dim=1))
    expected = sum(w[:, i:i + 1] * _gaussian_posterior_mean(spec.means[i], covs[i], x, 0.36) for i in range(3))
    torch.testing.assert_close(spec.denoiser(x, sigma), expected)


def test_denoiser_dtype_grad_and_sigma_forms():
    s = affine_mixture(8, generator=_seeded())
    x = s.x.clone().requires_grad_(True)
    out = s.spec.denoiser(x, torch.full((8,), 0.3))
    assert out.dtype == torch.float32 and out.shape == (8, 10)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(s.spec.denoiser(s.x, 0.3), out.detach())
    with pytest.raises(ValueError, match="sigma"):
        s.spec.denoiser(s.x, 0.0)
    with pytest.raises(ValueError, match="D=10"):
        s.spec.denoiser(s.x[:, :5], 0.3)


def test_spec_sample_gives_held_out_points_from_the_same_distribution():
    s = affine_mixture(50, dims=(3,), ambient_dim=5, generator=_seeded())
    fresh = s.spec.sample(50, generator=_seeded(2))
    u, mu = s.spec.bases[0], s.spec.means[0]
    resid = (fresh.x.double() - mu) - (fresh.x.double() - mu) @ u @ u.T
    assert resid.abs().max() < 1e-5 and fresh.spec is s.spec


def test_toy_dataset_items_and_collation():
    s = affine_mixture(10, generator=_seeded())
    ds = ToyDataset(s)
    assert len(ds) == 10
    x, lid, i = ds[3]
    assert torch.equal(x, s.x[3]) and int(lid) == int(s.lid[3]) and i == 3
    assert ds[-1][2] == 9
    with pytest.raises(IndexError):
        ds[10]
    xb, lidb, ib = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 10) and lidb.dtype == torch.long and ib.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("call, match", [
    (lambda: affine_mixture(0), "n must be"),
    (lambda: affine_mixture(10, dims=(2, 11)), "ambient_dim"),
    (lambda: affine_mixture(10, dims=()), "dims"),
    (lambda: affine_mixture(10, dims=(0,)), "dims"),
    (lambda: affine_mixture(10, scale=0.0), "scale"),
    (lambda: affine_mixture(10, scale=(1.0, 2.0)), "one per piece"),
    (lambda: affine_mixture(10, separation=-1.0), "separation"),
    (lambda: affine_mixture(10, weights=(1.0, 1.0)), "weights"),
    (lambda: affine_mixture(10, weights=(1.0, -1.0, 1.0)), "weights"),
    (lambda: squiggly_mixture(10, amplitude=-0.1), "amplitude"),
    (lambda: squiggly_mixture(10, frequency=0.0), "frequency"),
    (lambda: squiggly_mixture(10, latent="cauchy"), "latent"),
    (lambda: sphere(10, dim=10, ambient_dim=10), "dim \\+ 1"),
    (lambda: sphere(10, radius=math.inf), "radius"),
    (lambda: lollipop(10, ambient_dim=1), "ambient_dim"),
    (lambda: lollipop(10, weights=(1.0, 1.0)), "weights"),
])
def test_invalid_arguments_raise_value_error(call, match):
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        call()
    assert torch.equal(torch.get_rng_state(), state)


def test_invalid_types_raise_type_error():
    with pytest.raises(TypeError, match="dtype"):
        affine_mixture(10, dtype=torch.int64)
    with pytest.raises(TypeError, match="generator"):
        sphere(10, generator=0)
    with pytest.raises(TypeError, match="ManifoldSample"):
        ToyDataset(torch.zeros(3, 2))


def test_spec_coerces_to_float64_normalises_weights_and_checks_shapes():
    u = torch.eye(3)[:, :2]
    spec = AffineMixtureSpec(means=torch.zeros(1, 3), bases=(u,), variances=(torch.ones(2),),
                             weights=torch.tensor([3.0]))
    assert spec.means.dtype == spec.bases[0].dtype == torch.float64 and float(spec.weights[0]) == 1.0
    x = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(spec.denoiser(x, 1.0), torch.tensor([[0.5, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="basis"):
        AffineMixtureSpec(means=torch.zeros(1, 4), bases=(u,), variances=(torch.ones(2),), weights=torch.ones(1))
    with pytest.raises(ValueError, match="positive variances"):
        AffineMixtureSpec(means=torch.zeros(1, 3), bases=(u,), variances=(torch.zeros(2),), weights=torch.ones(1))
    with pytest.raises(ValueError, match="weights"):
        AffineMixtureSpec(means=torch.zeros(1, 3), bases=(u,), variances=(torch.ones(2),), weights=torch.ones(2))
