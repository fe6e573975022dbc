"""The network inside a training wrapper, seen without changing the model that trains.

Training scripts hand mmh_train a model that accelerate, DDP or ``torch.compile`` has wrapped:

- DDP / DataParallel keep the network in ``.module``; ``torch.compile`` in ``._orig_mod``;
- ``accelerator.prepare`` under ``mixed_precision="bf16"``/``"fp16"`` patches an autocast wrapper onto the
  instance's ``forward``. ``accelerator.unwrap_model(model, keep_fp32_wrapper=False)`` removes it from the
  model *for good*: training then silently continues without mixed precision, or crashes where the script
  feeds half-precision inputs. Never use it to hand a model to mmh_train.

:func:`raw_network` returns the innermost network and, where its ``forward`` was patched on the instance, a
view that calls the class's own ``forward`` instead. Nothing is changed on the model: the training step
keeps its wrapper, and the estimators run the network under their own precision policy (fp32 by default).
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["raw_network"]


class ClassForward(nn.Module):
    """Runs ``type(network).forward`` on ``network``: its class's forward, not one patched onto the instance.

    The network is a registered child, so parameters, ``state_dict`` (keys prefixed ``network.``),
    ``train()``/``eval()`` and ``modules()`` all reach it.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.network).forward(self.network, *args, **kwargs)


def raw_network(model: nn.Module) -> nn.Module:
    """The network inside ``model`` as the estimators should run it, without modifying ``model``.

    Unwraps DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``), then bypasses a
    ``forward`` patched onto the instance (accelerate's mixed-precision wrapper) with :class:`ClassForward`.

    Example (a diffusers training script under ``accelerate launch --mixed_precision bf16``)::

        denoiser = mmh_train.diffusers_denoiser(mmh_train.raw_network(model), noise_scheduler)
        guard.maybe_check(denoiser, global_step)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"raw_network takes the nn.Module your training loop updates; got {type(model).__name__}.")
    inner = model
    for _ in range(8):  # wrappers nest (a compiled DDP model): peel them one by one
        if isinstance(inner, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = inner.module
        elif isinstance(getattr(inner, "_orig_mod", None), nn.Module):
            inner = inner._orig_mod
        else:
            break
    return ClassForward(inner) if "forward" in vars(inner) else inner
