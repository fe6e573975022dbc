"""raw_network: a bf16 accelerate loop with the guard trains the same weights as without it, and the
estimators see the network in fp32 without the model losing its mixed-precision wrapper."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler, UNet2DModel

import mmh_train
from mmh_train.integrations.raw_network import ClassForward


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide state: other tests may have set it up without mixed precision."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)


def _train(with_guard: bool, steps: int = 4):
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    unet = _unet()
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    scheduler = DDPMScheduler()
    data = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    guard = mmh_train.MemorizationGuard(mmh_train.MemorizationMonitor(
        data[:16], data[16:], every_n_steps=2, estimator_options={"n_probes": 1})) if with_guard else None
    g = torch.Generator().manual_seed(2)
    for step in range(1, steps + 1):
        x0 = data[:8]
        noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (8,), generator=g)
        loss = ((unet(scheduler.add_noise(x0, noise, t), t).sample.float() - noise) ** 2).mean()  # the wrapper's bf16
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if guard is not None:
            guard.maybe_check(mmh_train.diffusers_denoiser(mmh_train.raw_network(unet), scheduler), step)
    return accelerator.unwrap_model(unet), guard, unet


def test_a_bf16_accelerate_loop_trains_the_same_weights_with_the_guard():
    plain, _, _ = _train(False)
    guarded, guard, prepared = _train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), guarded.state_dict().values()))
    assert len(guard.monitor.steps) == 2 and torch.isfinite(guard.last_result.lid_train).all()
    assert "forward" in vars(prepared)  # the mixed-precision wrapper is still on the training model


def test_the_estimators_see_the_class_forward_in_fp32():
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    prepared = accelerator.prepare(_unet())
    view = mmh_train.raw_network(prepared)
    assert isinstance(view, ClassForward) and view.network is prepared
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    assert prepared(x, t).sample.dtype == torch.float32  # the wrapper casts outputs back...
    torch.testing.assert_close(view(x, t).sample, _unet()(x, t).sample)  # ...the view is the fp32 network itself
    assert not torch.equal(prepared(x, t).sample, view(x, t).sample)  # while the wrapper still computes in bf16
    plain = _unet()
    assert mmh_train.raw_network(plain) is plain
    assert mmh_train.raw_network(torch.nn.DataParallel(plain)) is plain
