"""Model-free LID* against the known LID of every toy manifold, and duplicates reading 0."""

import pytest
import torch

from mmh_train import reference_lid
from mmh_train.data import affine_mixture, inject_duplicates_in_sample, lollipop, sphere, squiggly_mixture


def seeded():
    return torch.Generator().manual_seed(0)


TOYS = {
    "affine_2_4_8_in_R10": lambda: affine_mixture(3000, generator=seeded()),
    "sphere_2_in_R10": lambda: sphere(1500, dim=2, generator=seeded()),
    "sphere_4_in_R10": lambda: sphere(2000, dim=4, generator=seeded()),
    "squiggly_2_4_8_in_R10": lambda: squiggly_mixture(3000, generator=seeded()),
    "lollipop": lambda: lollipop(2000, generator=seeded()),
}


@pytest.mark.parametrize("toy", sorted(TOYS))
@pytest.mark.parametrize("method", ["lpca", "mle", "twonn"])
def test_median_within_one_of_the_truth_on_every_piece(toy, method):
    sample = TOYS[toy]()
    lid = reference_lid(sample.x, method=method, k=20)
    for true in sample.lid.unique().tolist():
        piece = lid[sample.lid == true]
        # Levina–Bickel's MLE is biased low in higher dimension at k = 20 (measured 6.9 on the 8-d
        # squiggly piece); everything else measured within ±0.35 of the truth.
        tol = 1.25 if (method == "mle" and true == 8) else 1.0
        assert abs(piece.median().item() - true) <= tol, (toy, method, true, piece.median().item())
        if method == "lpca":
            assert (piece - true).abs().mean() <= 0.5


@pytest.mark.parametrize("method", ["lpca", "mle", "twonn"])
@pytest.mark.parametrize("near_noise, radius", [(0.0, 0.0), (1e-4, 1e-2)])
def test_injected_duplicates_read_zero_and_leave_the_rest_alone(method, near_noise, radius):
    sample, dup = inject_duplicates_in_sample(affine_mixture(1000, generator=seeded()), fraction=0.05, copies=3,
                                              near_noise=near_noise, generator=seeded())
    lid = reference_lid(sample.x, method=method, duplicate_radius=radius)
    assert torch.isfinite(lid).all()
    assert torch.equal(lid[dup.duplicated], torch.zeros(int(dup.duplicated.sum())))
    assert (lid[~dup.duplicated] > 0).all()
    originals = sample.x[~dup.is_copy]  # one representative per group: what the estimator sees
    clean = reference_lid(originals, method=method)
    unique = ~dup.duplicated[~dup.is_copy]
    torch.testing.assert_close(lid[~dup.duplicated], clean[unique])  # the copies change nothing else
