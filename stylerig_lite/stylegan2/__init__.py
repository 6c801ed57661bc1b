"""StyleGAN2 in plain PyTorch: mapping, synthesis, discriminator, checkpoints, official import.

Split the way NVlabs' stylegan2-ada-pytorch splits a model (Karras et al., "Analyzing and
Improving the Image Quality of StyleGAN", CVPR 2020, and "Training Generative Adversarial Networks
with Limited Data", NeurIPS 2020):

* :mod:`~stylerig_lite.stylegan2.ops` -- the custom ops (``torch_utils/ops`` there): FIR
  resampling (:func:`upfirdn2d`, :func:`upsample2d`, :func:`downsample2d`), resampling
  convolution (:func:`conv2d_resample`), :func:`bias_act`, :func:`normalize_2nd_moment` and
  :func:`modulated_conv2d`, each with a fast path and a slow reference beside it
  (``impl='fast' | 'ref'``);
* :mod:`~stylerig_lite.stylegan2.networks` -- the models (``training/networks.py`` there):
  :class:`StyleGAN2Config` and its presets, the equalized-lr layers, :class:`Generator`
  (``G.mapping``, ``G.synthesis``) and :class:`Discriminator`, with the official module and
  parameter names;
* :mod:`~stylerig_lite.stylegan2.checkpoint` -- our own checkpoint format (``torch.save`` of plain
  dicts, read with ``weights_only=True``): :func:`save_checkpoint`, :func:`load_generator`, ...;
* :mod:`~stylerig_lite.stylegan2.legacy` -- official ``.pkl`` snapshots, read without running
  their code (``legacy.py`` there): :func:`load_official_pickle`;
* :mod:`~stylerig_lite.stylegan2.frozen` -- :class:`FrozenSynthesis`, the synthesis network traced
  and frozen for the editor's one-latent frames (same image, about half the time on the CPU; the
  eager network is its reference).

Everything public is re-exported here, so ``from stylerig_lite.stylegan2 import Generator`` and
``stylegan2.load_generator(...)`` work without naming the submodule.
"""

from __future__ import annotations

from .checkpoint import (CHECKPOINT_KIND, CHECKPOINT_VERSION, EMA_REFERENCE_KEY, load_checkpoint,  # noqa: F401
                         load_discriminator, load_generator, resolve_ema_reference, save_checkpoint,
                         save_generator_only)
from .frozen import FrozenSynthesis  # noqa: F401
from .legacy import (EasyDictStub, OfficialPickleError, PersistentRecord, config_from_official_kwargs,  # noqa: F401
                     load_official_pickle, read_official_pickle)
from .networks import (PRESETS, Conv2dLayer, Discriminator, DiscriminatorBlock, DiscriminatorEpilogue,
                       FullyConnectedLayer, Generator, MappingNetwork, MinibatchStdLayer, StyleGAN2Config,
                       SynthesisBlock, SynthesisLayer, SynthesisNetwork, ToRGBLayer, count_parameters, get_config)
from .ops import (bias_act, conv2d_resample, downsample2d, modulated_conv2d, normalize_2nd_moment, setup_filter,
                  upfirdn2d, upsample2d)

__all__ = [
    "FrozenSynthesis",
    "StyleGAN2Config",
    "PRESETS",
    "get_config",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
    "downsample2d",
    "conv2d_resample",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "bias_act",
    "FullyConnectedLayer",
    "Conv2dLayer",
    "MappingNetwork",
    "SynthesisLayer",
    "ToRGBLayer",
    "SynthesisBlock",
    "SynthesisNetwork",
    "Generator",
    "DiscriminatorBlock",
    "MinibatchStdLayer",
    "DiscriminatorEpilogue",
    "Discriminator",
    "count_parameters",
    "save_checkpoint",
    "load_checkpoint",
    "load_generator",
    "load_discriminator",
    "load_official_pickle",
    "read_official_pickle",
    "config_from_official_kwargs",
    "CHECKPOINT_KIND",
    "CHECKPOINT_VERSION",
    "EMA_REFERENCE_KEY",
    "save_generator_only",
    "resolve_ema_reference",
    "OfficialPickleError",
    "EasyDictStub",
    "PersistentRecord",
]
