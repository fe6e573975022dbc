"""Each probe's own conditioning (class label, caption embedding, any per-sample keyword tensor).

A conditional model's LID at a training point is LID_θ(x | c) with the point's own condition c
(science.md §1: conditioning lowers LID). The monitor takes the conditions per dataset index, gathers them
once for its probes, and binds the rows of each probe batch to the denoiser
(``denoiser.bind(class_labels=...)``) before measuring: one network call per batch, as without them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ProbeConditioning"]

_FIX = {"encoder_hidden_states": "Pass the text encoder's per-token output for each caption (its last_hidden_state, "
                                 "e.g. pipeline.encode_prompt(...)[0], [N, L, D]), not a pooled [N, D] vector (that "
                                 "one needs [:, None, :]), from the text encoder this network was trained with.",
        "pooled_projections": "Pass the pooled text embedding of each caption (SD3: encode_prompt(...)[2], [N, P])."}


def _check(conditions: Any, size: int, name: str) -> dict[str, Tensor]:
    if not isinstance(conditions, dict) or not conditions:
        raise TypeError(f"{name} must be a non-empty dict of keyword → tensor [N, ...] (one row per dataset index), "
                        f"e.g. {{'class_labels': labels}}; got {type(conditions).__name__}.")
    for key, value in conditions.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{name} keys are the denoiser's keyword arguments; {key!r} is not a valid name.")
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != size:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name}[{key!r}] must be a tensor with one row per dataset index ([{size}, ...]); "
                             f"got {shape}.")
    return dict(conditions)


class ProbeConditioning:
    """Per-probe keyword tensors, gathered once, sliced per probe batch.

    Args:
        train: ``{keyword: [N, ...]}`` per training-set index; heldout: the same per held-out index (required
            when there are held-out probes).
        n_train, n_heldout: the sets' sizes; has_heldout: whether the monitor has held-out probes.
    """

    def __init__(self, train: dict[str, Tensor], heldout: dict[str, Tensor] | None, *, n_train: int, n_heldout: int,
                 has_heldout: bool) -> None:
        self.train = _check(train, n_train, "conditioning")
        if has_heldout:
            if heldout is None:
                raise ValueError("conditioning is given for the training points but not for the held-out points: pass "
                                 "heldout_conditioning with the same keys (each held-out point's own condition).")
            self.heldout = _check(heldout, n_heldout, "heldout_conditioning")
            if set(self.heldout) != set(self.train):
                raise ValueError(f"conditioning and heldout_conditioning need the same keys; got "
                                 f"{sorted(self.train)} and {sorted(self.heldout)}.")
        else:
            self.heldout = None
        self.per_probe: dict[str, Tensor] | None = None
        self._checked: set[tuple[int, ...]] = set()  # networks whose shapes were checked

    def gather(self, train_index: Tensor, heldout_index: Tensor) -> None:
        """Each probe's rows, train probes first (as the monitor orders them)."""
        self.per_probe = {}
        for key, value in self.train.items():
            parts = [value[train_index.to(value.device)].cpu()]
            if self.heldout is not None and len(heldout_index):
                parts.append(self.heldout[key][heldout_index.to(self.heldout[key].device)].cpu())
            self.per_probe[key] = torch.cat(parts)

    def bind(self, denoiser: Any, positions: Tensor, device: torch.device) -> Any:
        """``denoiser`` with the rows of the probes at ``positions`` bound as keyword arguments."""
        if not callable(getattr(denoiser, "bind", None)):
            raise TypeError(f"the monitor was given per-probe conditioning, so the denoiser must take keyword "
                            f"arguments through .bind(...): wrap the network with a parameterization "
                            f"(mmh_train.diffusers_denoiser(unet, scheduler), vp_denoiser(net), ...); got "
                            f"{type(denoiser).__name__}.")
        self.check_against(denoiser)
        return denoiser.bind(**{key: value[positions].to(device) for key, value in self.per_probe.items()})

    def check_against(self, denoiser: Any) -> None:
        """Refuses, before any network call, conditioning whose shape a known diffusers network cannot take:
        ``encoder_hidden_states`` must be ``[N, L, D]`` with D the network's ``cross_attention_dim``
        (``UNet2DConditionModel``) or ``joint_attention_dim`` (``SD3Transformer2DModel``); ``pooled_projections``
        ``[N, pooled_projection_dim]``. Other networks and keywords are left to :meth:`explain`."""
        modules = getattr(denoiser, "modules", lambda: [])()
        key = tuple(id(m) for m in modules)
        if key in self._checked:
            return
        for network in modules:
            for part in network.modules():
                config = getattr(part, "config", None)
                if config is None or not hasattr(config, "get"):
                    continue
                width = config.get("cross_attention_dim") or config.get("joint_attention_dim")
                expected = {"encoder_hidden_states": (3, width, "[N, L, D]"),
                            "pooled_projections": (2, config.get("pooled_projection_dim"), "[N, P]")}
                for name, (dims, size, layout) in expected.items():
                    value = self.per_probe.get(name)
                    if value is None or not isinstance(size, int):
                        continue
                    if value.dim() != dims or value.shape[-1] != size:
                        raise ValueError(
                            f"conditioning[{name!r}] has shape {tuple(value.shape)} per probe set, but "
                            f"{type(part).__name__} takes {name} {layout} with last dimension {size}. "
                            f"{_FIX[name]}")
        self._checked.add(key)

    def explain(self, error: Exception, positions: Tensor) -> ValueError:
        """The error of a network call with this conditioning bound, with the bound shapes and the fix."""
        shapes = ", ".join(f"{key} {tuple(value[positions].shape)}" for key, value in self.per_probe.items())
        return ValueError(f"measuring LID_θ(x | c) failed with the per-probe conditioning bound ({shapes}): "
                          f"{type(error).__name__}: {str(error).rstrip('.')}. If a shape is the cause: each keyword "
                          f"needs one row per probe, shaped as the network takes it for one sample in its own call "
                          f"(e.g. UNet2DConditionModel: "
                          f"encoder_hidden_states [B, L, cross_attention_dim]). {_FIX['encoder_hidden_states']}")
