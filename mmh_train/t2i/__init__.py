"""Text-to-image models under the monitor: diffusers pipelines (UNet or SD3 transformer), latents, captions.

- :mod:`~mmh_train.t2i.pipeline`: :class:`T2IModel` (a pipeline's network, VAE, scheduler and text encoders),
  :func:`load_pretrained` (a local folder only) and :class:`ConditionedNetwork`.
- :mod:`~mmh_train.t2i.tiny`: :func:`tiny_pipeline`, random tiny pipelines from configs for tests and CPU demos.

Needs the optional extra ``t2i`` (peft, transformers): ``pip install -e ".[t2i]"``.
"""

from .pipeline import EXPECTED_LAYOUT, FAMILIES, ConditionedNetwork, T2IModel, load_pretrained, pipeline_family
from .tiny import tiny_clip_tokenizer, tiny_pipeline

__all__ = ["EXPECTED_LAYOUT", "FAMILIES", "ConditionedNetwork", "T2IModel", "load_pretrained", "pipeline_family",
           "tiny_clip_tokenizer", "tiny_pipeline"]
