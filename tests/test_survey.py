"""The data survey: duplicate groups sized against each point's neighbourhood, the spacing, the σ grid."""

from __future__ import annotations

import math

import pytest
import torch

from mmh_train.survey import NOISE_FRACTIONS, near_duplicate_groups, sigma_grid, survey_training_data
from mmh_train.views import comparison_view


def test_exact_and_near_copies_group_and_natural_neighbours_do_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    x[10] = x[3]                                              # an exact copy
    x[20] = x[5] + 1e-3 * torch.randn(8, generator=g, dtype=torch.float64)  # a near copy
    groups = near_duplicate_groups(x)
    assert groups.group[10] == groups.group[3] and groups.group[20] == groups.group[5]
    assert int(groups.duplicated.sum()) == 4
    assert near_duplicate_groups(x, near_ratio=0.0).group[20] != near_duplicate_groups(x, near_ratio=0.0).group[5]


def test_a_dense_low_dimensional_region_is_not_taken_for_copies():
    """1000 points on a 2-d square (spacing ~0.02) next to a sparse 8-d cloud (spacing ~3): the radius follows
    each point's own neighbourhood, so the dense points are not linked, as a global radius would link them.
    (On a 1-d piece chance links are frequent, ~k·near_ratio of the points: module docstring.)"""
    g = torch.Generator().manual_seed(1)
    line = torch.zeros(1000, 8, dtype=torch.float64)
    line[:, :2] = torch.rand(1000, 2, generator=g, dtype=torch.float64)
    cloud = 5 + torch.randn(200, 8, generator=g, dtype=torch.float64)
    groups = near_duplicate_groups(torch.cat([line, cloud]))
    assert int(groups.duplicated.sum()) <= 0.02 * 1200


def test_the_spacing_and_grid_follow_the_datas_scale():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 6, generator=g)
    probes = torch.arange(0, 300, 3)
    small, large = survey_training_data(x, probes), survey_training_data(10 * x, probes)
    assert large.spacing == pytest.approx(10 * small.spacing, rel=1e-5)
    nn = torch.cdist(x[probes], x).topk(2, largest=False).values[:, 1].median()
    assert small.spacing == pytest.approx(float(nn), rel=1e-5)
    assert small.dim == 6
    # the noise's length σ√D is a fixed fraction of the spacing, in any dimension
    for dim in (10, 256, 1024):
        grid = sigma_grid(2.0, dim)
        assert [s * math.sqrt(dim) / 2.0 for s in grid] == pytest.approx(sorted(NOISE_FRACTIONS, reverse=True))
    # on the 10-d toy the levels are the calibrated 0.8 / 0.5 / 0.3 × spacing
    assert sigma_grid(2.0, 10) == pytest.approx([1.6, 1.0, 0.6])
    with pytest.raises(ValueError, match="Pass sigma= explicitly"):
        sigma_grid(0.0, 10)
    with pytest.raises(ValueError, match="number of features"):
        sigma_grid(1.0, 0)


def test_images_are_surveyed_in_a_reduced_view_with_the_spacing_in_pixel_units():
    g = torch.Generator().manual_seed(3)
    small = torch.rand(50, 3, 8, 8, generator=g)
    images = small.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # 32×32, constant 4×4 blocks
    view = comparison_view(images)
    assert view.shape == (50, 3 * 16 * 16)
    survey = survey_training_data(images, torch.arange(50))
    direct = torch.cdist(images.flatten(1), images.flatten(1)).fill_diagonal_(math.inf).min(1).values.median()
    assert survey.spacing == pytest.approx(float(direct), rel=1e-4)  # exact for blockwise-constant images
    assert comparison_view(torch.rand(4, 10)).shape == (4, 10)
    with pytest.raises(ValueError, match="max_side"):
        comparison_view(images, max_side=0)


def test_a_large_cluster_of_near_copies_is_one_group():
    """20 jittered copies of one point: its own 10th neighbour is a copy, so the scale's floor must link them."""
    g = torch.Generator().manual_seed(4)
    x = 0.1 * torch.randn(300, 8, generator=g, dtype=torch.float64)
    x[100:120] = x[0] + 1e-5 * torch.randn(20, 8, generator=g, dtype=torch.float64)
    groups = near_duplicate_groups(x)
    assert int(groups.size[0]) == 21 and bool((groups.group[100:120] == groups.group[0]).all())
    assert int(groups.duplicated.sum()) == 21


def test_the_spacing_is_measured_on_the_data_whatever_the_view():
    """28×28 images do not pool evenly to 16×16; the spacing still equals the data-space distance."""
    g = torch.Generator().manual_seed(5)
    images = torch.rand(40, 1, 28, 28, generator=g)
    survey = survey_training_data(images, torch.arange(40))
    view_nn = torch.cdist(survey.view, survey.view).fill_diagonal_(math.inf).argmin(1)
    direct = (images.flatten(1) - images[view_nn].flatten(1)).norm(dim=1).median()
    assert survey.spacing == pytest.approx(float(direct), rel=1e-5)
