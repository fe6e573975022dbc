import pytest
import torch
from closed_forms import GaussianSubspace

from mmh_train.lid import MemorizerDenoiser
from mmh_train.models import TimeMLP, small_unet
from mmh_train.quality import mmd_rbf, sliced_wasserstein
from mmh_train.sampling import edm_sigmas, sample

PIECE = GaussianSubspace(dim=6, k=2, variances=[1.0, 1.0], seed=0)


def test_sampling_the_exact_denoiser_reproduces_the_data_distribution():
    generated = sample(PIECE.denoiser, (400, 6), steps=24, generator=torch.Generator().manual_seed(1))
    data, fresh = PIECE.sample(400, seed=2).float(), PIECE.sample(400, seed=3).float()
    assert sliced_wasserstein(generated, data) < 1.5 * sliced_wasserstein(fresh, data)
    off_plane = (generated.double() - PIECE.mu) - (generated.double() - PIECE.mu) @ PIECE.U @ PIECE.U.T
    assert off_plane.norm(dim=1).max() < 0.05  # samples land on the 2-d plane


def test_sampling_the_perfect_memorizer_copies_training_points():
    train = PIECE.sample(10, seed=4).float()
    generated = sample(MemorizerDenoiser(train), (30, 6), steps=24)
    assert torch.cdist(generated, train).min(1).values.max() < 1e-2


def test_sampler_leaves_the_global_rng_alone_and_edm_grid_decreases_to_zero():
    state = torch.get_rng_state()
    sample(PIECE.denoiser, (4, 6), steps=4)
    assert torch.equal(torch.get_rng_state(), state)
    sigmas = edm_sigmas(8, 0.02, 50.0)
    assert sigmas[0] == pytest.approx(50.0) and sigmas[-2] == pytest.approx(0.02) and sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all()


def test_quality_distances_separate_near_and_far_sets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 5, generator=g), torch.randn(300, 5, generator=g)
    far = b + 2.0
    assert sliced_wasserstein(a, b) < 0.3 < sliced_wasserstein(a, far)
    assert abs(mmd_rbf(a, b)) < 0.02 < mmd_rbf(a, far)


def test_models_shapes_and_conditioning():
    net = TimeMLP(5, width=32, num_classes=3)
    y, t = torch.randn(4, 5), torch.rand(4) * 1000
    assert net(y, t).shape == (4, 5)
    assert not torch.equal(net(y, t, class_labels=torch.zeros(4, dtype=torch.long)),
                           net(y, t, class_labels=torch.ones(4, dtype=torch.long)))
    unet = small_unet(16, channels=(8, 16), attention=True, num_classes=10)
    out = unet(torch.randn(2, 1, 16, 16), torch.tensor([3, 7]), class_labels=torch.tensor([1, 2])).sample
    assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="divisible by 2"):
        small_unet(10, channels=(8, 16, 32))


def test_sampler_slices_per_sample_class_labels_with_its_batches():
    from diffusers import DDPMScheduler

    import mmh_train
    from mmh_train.models import NullLabelDefault

    torch.manual_seed(0)
    net = NullLabelDefault(TimeMLP(3, width=16, num_classes=3), null_label=2)
    den = mmh_train.diffusers_denoiser(net, DDPMScheduler())
    labels = torch.tensor([0, 1, 1, 0, 1])
    kwargs = dict(steps=4, sigma_max=10.0, generator=None)
    batched = sample(den, (5, 3), batch_size=2, class_labels=labels, **kwargs)
    one_by_one = torch.cat([sample(den.bind(class_labels=labels[i:i + 1]), (5, 3), batch_size=1, **kwargs)[i:i + 1]
                            for i in range(5)])  # the same initial noise, each row under its own label
    torch.testing.assert_close(batched, one_by_one)
    assert not torch.allclose(batched, sample(den, (5, 3), batch_size=2, class_labels=1 - labels, **kwargs))
    with pytest.raises(ValueError, match=r"class_labels must have shape \[5\]"):
        sample(den, (5, 3), class_labels=labels[:4])
    with pytest.raises(TypeError, match="needs a denoiser with bind"):
        sample(lambda x, s: x, (5, 3), class_labels=labels)
