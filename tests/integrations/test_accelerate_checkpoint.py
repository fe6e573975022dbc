"""The guard's state goes through accelerate's own checkpointing."""

import torch
from accelerate import Accelerator

from mmh_train.lid import MemorizerDenoiser
from mmh_train.integrations import MemorizationGuard, MemorizationStopper
from mmh_train.monitor import MemorizationMonitor
from mmh_train.remedies import PenaltySchedule


def make_guard(data):
    return MemorizationGuard(MemorizationMonitor(data, n_train_probes=8, sigma=0.1, every_n_steps=1,
                                                 reference=torch.full((len(data),), 2.0)),
                             penalty=PenaltySchedule(od_threshold=0.0), stopper=MemorizationStopper(patience=5))


def test_register_for_checkpointing_round_trip(tmp_path):
    data = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    accelerator = Accelerator(cpu=True)
    guard = make_guard(data)
    accelerator.register_for_checkpointing(guard)
    for step in (1, 2):
        guard.maybe_check(MemorizerDenoiser(data), step)  # the perfect memorizer: LID 0, every probe OD
    accelerator.save_state(str(tmp_path / "state"))

    fresh = Accelerator(cpu=True)
    restored = make_guard(data)
    fresh.register_for_checkpointing(restored)
    fresh.load_state(str(tmp_path / "state"))
    torch.testing.assert_close(restored.monitor.history_tensor(), guard.monitor.history_tensor(), equal_nan=True)
    assert restored.schedule.activated_at == 1 and restored.stopper.state_dict() == guard.stopper.state_dict()
    assert restored.last_result.metrics == guard.last_result.metrics
