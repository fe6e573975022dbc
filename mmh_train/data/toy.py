"""Toy point clouds whose local intrinsic dimension is known exactly (science.md §1, §5).

Every generator draws from an explicit ``torch.Generator`` (a fresh ``manual_seed(0)`` one when
None is given) and never touches the global RNG; it works in float64 on the CPU and casts to
``dtype`` at the end, so two dtypes give the same points up to rounding. Each point carries its true
LID and the index of the piece it came from. Generated points are shuffled, so any prefix of the
sample mixes all pieces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import as_sigma_batch, check_points, check_positive_int, check_sigma

__all__ = ["ManifoldSample", "ToyDataset", "AffineMixtureSpec", "affine_mixture", "sphere",
           "squiggly_mixture", "lollipop"]

_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class ManifoldSample:
    """Points with their ground-truth LID.

    Attributes:
        x: the points, ``[N, D]`` in the requested dtype.
        lid: true LID of each point, ``[N]`` long (0 for point masses).
        component: index of the piece each point was drawn from, ``[N]`` long.
        component_dims: LID of each piece, length C (``lid == component_dims[component]`` unless
            duplicates were injected, which set ``lid`` to 0).
        name: what made the sample, e.g. ``"affine_mixture"``.
        spec: the exact distribution when it has a closed-form denoiser (affine mixtures), else None.
        params: generator-specific float64 parameters (centres, bases, radius, ...).
    """

    x: Tensor
    lid: Tensor
    component: Tensor
    component_dims: tuple[int, ...]
    name: str
    spec: AffineMixtureSpec | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def ambient_dim(self) -> int:
        """D, the number of coordinates of each point."""
        return int(self.x.shape[1])


class ToyDataset(Dataset):
    """Map-style dataset over a :class:`ManifoldSample`; item ``i`` is ``(x_i [D], lid_i [], i)``."""

    def __init__(self, sample: ManifoldSample) -> None:
        if not isinstance(sample, ManifoldSample):
            raise TypeError(f"ToyDataset wraps a ManifoldSample; got {type(sample).__name__}.")
        self.sample = sample

    def __len__(self) -> int:
        return len(self.sample)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        j = range(len(self.sample))[i]  # normalises negative indices, raises IndexError out of range
        return self.sample.x[j], self.sample.lid[j], j


@dataclass(frozen=True, eq=False)
class AffineMixtureSpec:
    """Mixture of degenerate Gaussians ``Σ_i π_i N(μ_i, U_i Λ_i U_iᵀ)``, piece i of LID ``k_i``.

    Attributes:
        means: centres μ_i, ``[C, D]`` float64.
        bases: orthonormal bases U_i, each ``[D, k_i]`` float64.
        variances: the eigenvalues λ of each piece along its basis, each ``[k_i]`` float64, > 0.
        weights: mixture weights π, ``[C]`` float64, ≥ 0.

    All tensors are stored as float64 CPU tensors and the weights are normalised to sum to 1.
    """

    means: Tensor
    bases: tuple[Tensor, ...]
    variances: tuple[Tensor, ...]
    weights: Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "means", _cpu64(self.means))
        object.__setattr__(self, "bases", tuple(_cpu64(u) for u in self.bases))
        object.__setattr__(self, "variances", tuple(_cpu64(v) for v in self.variances))
        object.__setattr__(self, "weights", _check_weights(_cpu64(self.weights).tolist(), len(self.bases)))
        c, d = self.means.shape
        ok = len(self.bases) == len(self.variances) == c and all(
            u.shape[0] == d and lam.shape == (u.shape[1],) and bool((lam > 0).all())
            for u, lam in zip(self.bases, self.variances))
        if not ok:
            raise ValueError(f"AffineMixtureSpec needs, per centre (means [C={c}, D={d}]), a basis [D, k] "
                             f"and k positive variances; got bases {[tuple(u.shape) for u in self.bases]} "
                             f"and variances {[v.tolist() for v in self.variances]}.")

    @property
    def dims(self) -> tuple[int, ...]:
        """LID of each piece, ``k_i``."""
        return tuple(int(u.shape[1]) for u in self.bases)

    @property
    def ambient_dim(self) -> int:
        """D."""
        return int(self.means.shape[1])

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> ManifoldSample:
        """Draws n points (piece i gets ``round(n·π_i)``, largest remainder) as a :class:`ManifoldSample`.

        With a fresh generator this gives held-out points from the same distribution.
        """
        check_positive_int(n, "n")
        _check_dtype(dtype)
        g = _resolve_generator(generator)
        counts = _split_counts(n, self.weights)
        xs, comps = [], []
        for i, (m, u, lam) in enumerate(zip(counts, self.bases, self.variances)):
            z = torch.randn(m, u.shape[1], generator=g, dtype=_F64) * lam.sqrt()
            xs.append(self.means[i] + z @ u.T)
            comps.append(torch.full((m,), i, dtype=torch.long))
        return _finish(torch.cat(xs), torch.cat(comps), self.dims, "affine_mixture", g, dtype, spec=self)

    def log_posterior(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Log posterior ``log p(i | x0 + σε = x)`` of each piece, ``[B, C]`` float64, for x ``[B, D]``."""
        log_joint, _ = self._pieces(x, sigma)
        return log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)

    def denoiser(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact denoiser ``E[x0 | x0 + σε = x]`` of the mixture (science.md §5), differentiable in x.

        Piece i contributes ``D_i(x) = μ_i + U_i diag(λ/(λ+σ²)) U_iᵀ (x − μ_i)``, weighted by the
        posterior ``∝ π_i N(x; μ_i, U_i Λ_i U_iᵀ + σ² I)`` (log-sum-exp in float64).

        Args:
            x: noisy points, ``[B, D]``.
            sigma: noise level, a float or ``[B]``.

        Returns:
            ``[B, D]`` in x's dtype and device.
        """
        log_joint, denoised = self._pieces(x, sigma)
        w = torch.softmax(log_joint, dim=1)  # [B, C]
        return torch.einsum("bc,cbd->bd", w, denoised).to(x.dtype)

    def _pieces(self, x: Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``log π_i N(x; μ_i, U_i Λ_i U_iᵀ + σ²I)`` ``[B, C]`` and ``D_i(x)`` ``[C, B, D]``."""
        if check_points(x, "x").dim() != 2 or x.shape[1] != self.ambient_dim:
            raise ValueError(f"x must have shape [B, D={self.ambient_dim}]; got {tuple(x.shape)}.")
        check_sigma(sigma, x.shape[0])
        s2 = as_sigma_batch(sigma, x.shape[0], device=x.device).square()[:, None]  # [B, 1]
        xd, d, log_joint, denoised = x.to(_F64), self.ambient_dim, [], []
        for mu, u, lam, pi in zip(self.means.to(x.device), self.bases, self.variances, self.weights):
            u, lam = u.to(x.device), lam.to(x.device)
            r = xd - mu                                  # [B, D]
            c = r @ u                                    # [B, k] coordinates in the piece
            shrink = lam / (lam + s2)                    # [B, k] λ/(λ+σ²)
            # Woodbury: (UΛUᵀ + σ²I)⁻¹ = σ⁻² (I − U diag(λ/(λ+σ²)) Uᵀ)
            maha = (r.square().sum(1) - (c.square() * shrink).sum(1)) / s2[:, 0]
            logdet = (d - u.shape[1]) * s2[:, 0].log() + (lam + s2).log().sum(1)
            log_joint.append(pi.log() - 0.5 * (maha + logdet + d * math.log(2 * math.pi)))
            denoised.append(mu + (c * shrink) @ u.T)
        return torch.stack(log_joint, dim=1), torch.stack(denoised)


def affine_mixture(n: int, dims: Sequence[int] = (2, 4, 8), ambient_dim: int = 10, *,
                   separation: float = 6.0, scale: float | Sequence[float] = 1.0,
                   weights: Sequence[float] | None = None, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> ManifoldSample:
    """Gaussians on random affine subspaces of dimensions ``dims`` (piece i has LID ``dims[i]``).

    Piece i is ``N(μ_i, s_i² U_i U_iᵀ)`` with ``U_i`` the Q factor of a Gaussian ``[D, k_i]`` matrix.
    Centres sit ``separation · max(s)`` apart (a regular simplex when C ≤ D), centred at the origin,
    so the pieces do not overlap. With the defaults each coordinate has std ≈ 1.3, matching the
    library's σ ≈ 0.17 for roughly unit-variance data.

    Args:
        n: number of points.
        dims: LID of each piece, each in ``[1, ambient_dim]``.
        ambient_dim: D.
        separation: distance between centres in units of the largest per-piece std, > 0.
        scale: per-piece std s_i along its directions (one float for all pieces, or one per piece).
        weights: mixture weights (non-negative, normalised); uniform when None.
        generator: source of randomness; ``torch.Generator().manual_seed(0)`` when None.
        dtype: floating dtype of ``x``.

    Returns:
        A :class:`ManifoldSample` of ``n`` points with ``spec`` set (use ``spec.denoiser``).
    """
    dims, scales, w = _check_mixture_args(n, dims, ambient_dim, separation, scale, weights, dtype)
    g = _resolve_generator(generator)
    means = _centres(len(dims), ambient_dim, separation * max(scales), g)
    bases = tuple(_orthonormal(ambient_dim, k, g) for k in dims)
    variances = tuple(torch.full((k,), s * s, dtype=_F64) for k, s in zip(dims, scales))
    spec = AffineMixtureSpec(means=means, bases=bases, variances=variances, weights=w)
    return spec.sample(n, generator=g, dtype=dtype)


def sphere(n: int, dim: int = 2, ambient_dim: int = 10, radius: float = 1.0, *,
           generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> ManifoldSample:
    """Uniform points on a ``dim``-sphere of the given radius (LID ``dim``), randomly rotated into R^D.

    The sphere lives in a random ``(dim+1)``-dimensional linear subspace and is centred at 0, so every
    point has norm ``radius``. ``params`` holds ``basis [D, dim+1]`` and ``radius``.
    """
    for value, name in ((n, "n"), (dim, "dim"), (ambient_dim, "ambient_dim")):
        check_positive_int(value, name)
    if dim + 1 > ambient_dim:
        raise ValueError(f"a {dim}-sphere needs ambient_dim ≥ dim + 1 = {dim + 1}; got {ambient_dim}. "
                         f"Raise ambient_dim or lower dim.")
    _check_positive(radius, "radius")
    _check_dtype(dtype)
    g = _resolve_generator(generator)
    basis = _orthonormal(ambient_dim, dim + 1, g)
    u = torch.randn(n, dim + 1, generator=g, dtype=_F64)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-300)  # normalised Gaussians are uniform on S^dim
    return _finish(radius * u @ basis.T, torch.zeros(n, dtype=torch.long), (dim,), "sphere", g, dtype,
                   params={"basis": basis, "radius": float(radius)})


def squiggly_mixture(n: int, dims: Sequence[int] = (2, 4, 8), ambient_dim: int = 10, *,
                     amplitude: float = 0.5, frequency: float = 2.0, separation: float = 6.0,
                     scale: float | Sequence[float] = 1.0, latent: str = "uniform",
                     weights: Sequence[float] | None = None, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> ManifoldSample:
    """Curved pieces: piece i is the graph of a sinusoid over a ``k_i``-dim latent (LID ``k_i``).

    ``x = μ_i + s_i (A_i z + amplitude · B_i sin(frequency · W_i z))`` with ``z ∈ R^k`` of unit variance
    per coordinate (uniform on ``[−√3, √3]^k`` or standard Gaussian), ``A_i [D, k]`` and
    ``B_i [D, m]`` (``m = min(k, D − k)``) orthonormal columns spanning orthogonal subspaces, and
    ``W_i [m, k]`` with unit-norm rows. Since ``A_iᵀ(x − μ_i) = s_i z``, the map is injective and
    smooth, so the piece is a k-manifold. Its curvature is about ``amplitude · frequency² / s_i``; a
    piece with ``k = D`` has no room to bend and is flat. Centres are placed as in
    :func:`affine_mixture`. ``params`` holds ``means``, ``tangents`` (A_i), ``normals`` (B_i),
    ``frequencies`` (W_i) and ``scales``.

    Args:
        amplitude: height of the sinusoid relative to s_i, ≥ 0 (0 gives flat pieces).
        frequency: angular frequency of the sinusoid along the latent, > 0.
        latent: ``"uniform"`` or ``"gaussian"``.
        Others: as in :func:`affine_mixture`.
    """
    dims, scales, w = _check_mixture_args(n, dims, ambient_dim, separation, scale, weights, dtype)
    _check_positive(amplitude, "amplitude", allow_zero=True)
    _check_positive(frequency, "frequency")
    if latent not in ("uniform", "gaussian"):
        raise ValueError(f"latent={latent!r} is not supported; choose one of 'uniform', 'gaussian'.")
    g = _resolve_generator(generator)
    d = ambient_dim
    means = _centres(len(dims), d, separation * max(scales), g)
    frames = [_orthonormal(d, k + min(k, d - k), g) for k in dims]
    tangents = tuple(q[:, :k] for q, k in zip(frames, dims))
    normals = tuple(q[:, k:] for q, k in zip(frames, dims))
    freqs = [torch.randn(min(k, d - k), k, generator=g, dtype=_F64) for k in dims]
    freqs = [wk / wk.norm(dim=1, keepdim=True).clamp_min(1e-300) for wk in freqs]
    xs, comps = [], []
    for i, m in enumerate(_split_counts(n, w)):
        k = dims[i]
        z = ((torch.rand(m, k, generator=g, dtype=_F64) * 2 - 1) * math.sqrt(3.0) if latent == "uniform"
             else torch.randn(m, k, generator=g, dtype=_F64))
        bump = torch.sin(frequency * z @ freqs[i].T) @ normals[i].T  # [m, D]
        xs.append(means[i] + scales[i] * (z @ tangents[i].T + amplitude * bump))
        comps.append(torch.full((m,), i, dtype=torch.long))
    params = {"means": means, "tangents": tangents, "normals": normals, "frequencies": tuple(freqs),
              "scales": scales, "amplitude": float(amplitude), "frequency": float(frequency)}
    return _finish(torch.cat(xs), torch.cat(comps), dims, "squiggly_mixture", g, dtype, params=params)


def lollipop(n: int, ambient_dim: int = 2, *, weights: Sequence[float] = (0.6, 0.3, 0.1),
             generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> ManifoldSample:
    """The lollipop benchmark: a disk (candy, LID 2), a segment (stick, LID 1) and one point (LID 0).

    In the plane: the candy is the uniform disk of radius 0.75 centred at (0.75, 0.75); the stick
    is uniform on the segment from (−1.25, −1.25) to where that diagonal meets the disk; the
    isolated point is (1, −1), repeated ``round(n·weights[2])`` times (a point mass, LID 0).
    For ``ambient_dim > 2`` the plane is rotated into R^D by a random orthonormal ``[D, 2]`` basis
    (identity when D = 2). Components: 0 candy, 1 stick, 2 point. ``params`` holds the geometry in
    ambient coordinates.

    Args:
        weights: share of the n points on the candy, the stick and the point.
    """
    check_positive_int(n, "n")
    check_positive_int(ambient_dim, "ambient_dim")
    if ambient_dim < 2:
        raise ValueError(f"the lollipop is planar; ambient_dim must be ≥ 2, got {ambient_dim}.")
    w = _check_weights(weights, 3)
    _check_dtype(dtype)
    g = _resolve_generator(generator)
    basis = torch.eye(2, dtype=_F64) if ambient_dim == 2 else _orthonormal(ambient_dim, 2, g)
    centre, radius = torch.tensor([0.75, 0.75], dtype=_F64), 0.75
    start, point = torch.tensor([-1.25, -1.25], dtype=_F64), torch.tensor([1.0, -1.0], dtype=_F64)
    end = centre - radius * torch.tensor([1.0, 1.0], dtype=_F64) / math.sqrt(2.0)
    n_candy, n_stick, n_point = _split_counts(n, w)
    r = radius * torch.rand(n_candy, generator=g, dtype=_F64).sqrt()  # sqrt: uniform in area
    theta = 2 * math.pi * torch.rand(n_candy, generator=g, dtype=_F64)
    candy = centre + torch.stack([r * theta.cos(), r * theta.sin()], dim=1)
    stick = start + torch.rand(n_stick, 1, generator=g, dtype=_F64) * (end - start)
    x = torch.cat([candy, stick, point.expand(n_point, 2)]) @ basis.T
    comp = torch.cat([torch.full((m,), i, dtype=torch.long) for i, m in enumerate((n_candy, n_stick, n_point))])
    params = {"basis": basis, "candy_centre": basis @ centre, "candy_radius": radius,
              "stick_start": basis @ start, "stick_end": basis @ end, "point": basis @ point}
    return _finish(x, comp, (2, 1, 0), "lollipop", g, dtype, params=params)


def _finish(x: Tensor, comp: Tensor, dims: tuple[int, ...], name: str, g: torch.Generator,
            dtype: torch.dtype, *, spec: AffineMixtureSpec | None = None,
            params: dict[str, Any] | None = None) -> ManifoldSample:
    """Shuffles the points (with ``g``), casts them and attaches the true LID labels."""
    perm = torch.randperm(x.shape[0], generator=g)
    x, comp = x[perm], comp[perm]
    lid = torch.tensor(dims, dtype=torch.long)[comp]
    return ManifoldSample(x=x.to(dtype).contiguous(), lid=lid, component=comp, component_dims=tuple(dims),
                          name=name, spec=spec, params=dict(params or {}))


def _resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fresh ``manual_seed(0)`` one; data are drawn on the CPU."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator or None; got {generator!r}. Pass "
                        f"torch.Generator().manual_seed(seed) and move the result with .to(device).")
    return generator


def _cpu64(t: Any) -> Tensor:
    return torch.as_tensor(t).detach().to("cpu", _F64)


def _orthonormal(d: int, k: int, g: torch.Generator) -> Tensor:
    """A random ``[d, k]`` matrix with orthonormal columns (Haar: QR with the signs of R fixed)."""
    q, r = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=_F64))
    signs = torch.sign(torch.diagonal(r))
    return q * torch.where(signs == 0, torch.ones_like(signs), signs)


def _centres(c: int, d: int, distance: float, g: torch.Generator) -> Tensor:
    """``[c, d]`` centres with centroid 0 and smallest pairwise distance ``distance``."""
    if c == 1:
        return torch.zeros(1, d, dtype=_F64)
    if c <= d:  # regular simplex: orthonormal vectors are √2 apart
        pts = _orthonormal(d, c, g).T
    else:  # farthest-point picks from a Gaussian cloud, so no two centres end up close
        cloud = torch.randn(64 * c, d, generator=g, dtype=_F64)
        picked = [0]
        for _ in range(c - 1):
            picked.append(int(torch.cdist(cloud, cloud[picked]).min(dim=1).values.argmax()))
        pts = cloud[picked]
    pts = pts - pts.mean(dim=0)
    return pts * (distance / torch.pdist(pts).min())


def _split_counts(n: int, weights: Tensor) -> list[int]:
    """Splits n into counts proportional to ``weights`` (largest remainder, ties to lower index)."""
    raw = weights / weights.sum() * n
    counts = raw.floor().long()
    order = torch.argsort(raw - counts, descending=True, stable=True)
    counts[order[: n - int(counts.sum())]] += 1
    return counts.tolist()


def _check_positive(value: Any, name: str, *, allow_zero: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'≥' if allow_zero else '>'} 0; got {value!r}.")


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32; got {dtype!r}.")


def _check_weights(weights: Sequence[float] | None, c: int) -> Tensor:
    if weights is None:
        return torch.full((c,), 1.0 / c, dtype=_F64)
    w = torch.as_tensor(list(weights), dtype=_F64)
    if w.shape != (c,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be {c} finite non-negative numbers with a positive sum "
                         f"(one per piece); got {list(weights)!r}.")
    return w / w.sum()


def _check_mixture_args(n: int, dims: Sequence[int], ambient_dim: int, separation: float,
                        scale: float | Sequence[float], weights: Sequence[float] | None,
                        dtype: torch.dtype) -> tuple[tuple[int, ...], tuple[float, ...], Tensor]:
    """Validates the arguments shared by the mixtures; returns dims, per-piece scales and weights."""
    check_positive_int(n, "n")
    check_positive_int(ambient_dim, "ambient_dim")
    if isinstance(dims, (int, str)) or not isinstance(dims, Sequence) or len(dims) == 0:
        raise ValueError(f"dims must be a non-empty sequence of piece dimensions, e.g. (2, 4, 8); got {dims!r}.")
    for k in dims:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= ambient_dim:
            raise ValueError(f"every entry of dims must be an integer in [1, ambient_dim={ambient_dim}]; "
                             f"got {tuple(dims)!r}. Raise ambient_dim or lower the dims.")
    scales = (scale,) * len(dims) if isinstance(scale, (int, float)) else tuple(scale)
    if len(scales) != len(dims):
        raise ValueError(f"scale must be one float or one per piece ({len(dims)}); got {scale!r}.")
    for s in scales:
        _check_positive(s, "scale")
    _check_positive(separation, "separation")
    _check_dtype(dtype)
    return tuple(dims), tuple(float(s) for s in scales), _check_weights(weights, len(dims))
