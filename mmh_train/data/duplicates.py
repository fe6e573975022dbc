"""Duplicate injection: the controlled cause of data-driven memorization (DD-Mem, science.md §1).

Exact copies of a training point turn it into a point mass, so its true LID is 0; a model that
fits them reproduces the point verbatim. :func:`inject_duplicates` appends copies of a random subset
of points and records which output rows belong together, so that detectors and remedies (duplicate
groups, per-sample loss weights) can be checked against the truth.

Layout of the output: rows ``0..N−1`` are the original points in their original order (their
indices do not move); then, for each chosen source point in increasing index order, its ``copies``
copies one after another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .._checks import check_points
from .toy import ManifoldSample, _resolve_generator

__all__ = ["DuplicatedData", "inject_duplicates", "inject_duplicates_in_sample"]


@dataclass(frozen=True, eq=False)
class DuplicatedData:
    """A data set with injected (near-)duplicates and the bookkeeping of who copies whom.

    Attributes:
        x: all points, ``[N', ...]`` with ``N' = N + M·copies``; rows ``0..N−1`` are the originals.
        source: ``[N']`` long; the original row each point copies (its own index for originals).
        is_copy: ``[N']`` bool; True for the appended copies only.
        duplicated: ``[N']`` bool; True for every member of a duplicated group, original included.
        group: ``[N']`` long; a group id shared by a point and its copies and unique for every
            non-duplicated point. It is the index of the group's original (so equal to ``source``);
            treat it as an opaque label.
        num_original: N.
        copies: copies appended per chosen source point.
        near_noise: std of the Gaussian noise added to each copy (0 for exact copies).
    """

    x: Tensor
    source: Tensor
    is_copy: Tensor
    duplicated: Tensor
    group: Tensor
    num_original: int
    copies: int
    near_noise: float

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sources(self) -> Tensor:
        """Indices of the original points that were duplicated, ``[M]`` long, increasing."""
        return torch.nonzero(self.duplicated[: self.num_original]).flatten()

    @property
    def group_size(self) -> Tensor:
        """Size of each point's group, ``[N']`` long (1 + copies for duplicated points, else 1)."""
        return torch.bincount(self.group, minlength=self.num_original)[self.group]


def inject_duplicates(x: Tensor, *, fraction: float, copies: int, near_noise: float = 0.0,
                      generator: torch.Generator | None = None) -> DuplicatedData:
    """Appends ``copies`` copies of ``round(fraction·N)`` randomly chosen points of ``x``.

    Args:
        x: points, ``[N, ...]`` floating and finite (vectors or images).
        fraction: share of the N points to duplicate, in ``[0, 1]`` (rounded half up).
        copies: extra copies per chosen point, ≥ 1.
        near_noise: std of isotropic Gaussian noise added to every copy; 0 gives exact copies.
        generator: CPU generator for the choice of points and the noise;
            ``torch.Generator().manual_seed(0)`` when None. The global RNG is not touched.

    Returns:
        A :class:`DuplicatedData` on x's device and in x's dtype.
    """
    check_points(x, "x", min_dim=1)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1] (the share of points to duplicate); "
                         f"got {fraction!r}.")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an integer ≥ 1 (extra copies per chosen point); got {copies!r}. "
                         f"To inject nothing, pass fraction=0.")
    if (isinstance(near_noise, bool) or not isinstance(near_noise, (int, float))
            or not math.isfinite(near_noise) or near_noise < 0):
        raise ValueError(f"near_noise must be a finite number ≥ 0 (0 for exact copies); got {near_noise!r}.")
    g = _resolve_generator(generator)
    n = int(x.shape[0])
    m = int(math.floor(fraction * n + 0.5))
    chosen = torch.sort(torch.randperm(n, generator=g)[:m]).values        # [M] on the CPU
    copy_source = chosen.repeat_interleave(copies)                         # [M·copies]
    extra = x[copy_source.to(x.device)]
    if near_noise > 0 and extra.shape[0] > 0:
        noise = torch.randn(extra.shape, generator=g, dtype=torch.float64) * near_noise
        extra = extra + noise.to(device=x.device, dtype=x.dtype)
    source = torch.cat([torch.arange(n), copy_source])
    is_copy = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(len(copy_source), dtype=torch.bool)])
    duplicated = torch.zeros(n, dtype=torch.bool)
    duplicated[chosen] = True
    dev = x.device
    return DuplicatedData(x=torch.cat([x, extra]), source=source.to(dev), is_copy=is_copy.to(dev),
                          duplicated=duplicated[source].to(dev), group=source.clone().to(dev),
                          num_original=n, copies=copies, near_noise=float(near_noise))


def inject_duplicates_in_sample(sample: ManifoldSample, *, fraction: float, copies: int,
                                near_noise: float = 0.0, generator: torch.Generator | None = None,
                                ) -> tuple[ManifoldSample, DuplicatedData]:
    """Injects duplicates into a :class:`ManifoldSample` and sets the true LID of their groups to 0.

    Every member of a duplicated group, the original included, gets ``lid = 0``: a point repeated
    exactly is a point mass, so LID* = 0. Near-duplicates get 0 too: the group is a cluster of
    ``copies + 1`` points of radius about ``near_noise·√D``, and at any noise level σ above that
    radius (the scales at which FLIPD is read) the cluster is indistinguishable from a point mass.
    Only below ``near_noise`` would the cluster resolve into separate points, at which scale the
    finite training set is all point masses anyway. ``component`` is inherited from the source;
    ``spec`` and ``params`` still describe the clean distribution the points were drawn from.

    Returns:
        The new sample (``x [N', D]``, name suffixed with ``"+duplicates"``) and the bookkeeping.
    """
    if not isinstance(sample, ManifoldSample):
        raise TypeError(f"sample must be a ManifoldSample; got {type(sample).__name__}. "
                        f"For a bare tensor use inject_duplicates(x, ...).")
    dup = inject_duplicates(sample.x, fraction=fraction, copies=copies, near_noise=near_noise,
                            generator=generator)
    source = dup.source.to(sample.lid.device)
    lid = sample.lid[source].clone()
    lid[dup.duplicated.to(lid.device)] = 0
    new = replace(sample, x=dup.x, lid=lid, component=sample.component[source].clone(),
                  name=f"{sample.name}+duplicates", params=dict(sample.params))
    return new, dup

