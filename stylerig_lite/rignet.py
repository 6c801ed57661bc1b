"""RigNet: edit a StyleGAN latent so that the image takes on given 3DMM parameters.

StyleRig (Tewari et al., CVPR 2020) rigs a *frozen* StyleGAN with a 3D
morphable model through a small network that works in W+ (one latent
``w_i`` per synthesis layer, ``[B, num_ws, w_dim]``)::

    l_i   = Enc_i(w_i)                 [B, 32]       one linear layer per synthesis layer i
    d_i   = Dec_i([l_i, p])            [B, w_dim]    one linear layer per layer, p = target parameters
    ŵ     = w + d                      [B, num_ws, w_dim]

``p`` holds the parameters of *one* controlled component (one RigNet per
component, as in the paper): the head rotation, the 53 expression weights or
the 27 spherical-harmonics light coefficients (:data:`COMPONENTS`). The
decoder starts at zero, so an untrained RigNet is the identity (``ŵ = w``):
training starts from "change nothing" and learns only the edit.

Training is self-supervised through the frozen generator ``G`` and the frozen
face estimator ``F`` (:mod:`stylerig_lite.reconstruction`). For two latents
``w`` and ``v`` with ``p_w = F(G(w))`` and ``p_v = F(G(v))``::

    L_rec     = ‖RigNet(w, p_w) − w‖²                                   editing toward itself changes nothing
    ŵ         = RigNet(w, p_v),   p̂ = F(G(ŵ))
    L_edit    = L_render(I_v, p̂ with the non-target components of p_v)   the target component came across
    L_consist = L_render(I_w, p̂ with the target component of p_w)       nothing else changed

``L_render`` is :func:`stylerig_lite.losses.render_loss` (photometric on the
rendered face mask + landmarks, with F's landmarks of the image as targets).
Both directions (``w → v`` and ``v → w``) are used, the paper's siamese
training; here they are one batch of ``2B`` edits. Gradients flow from the
render losses through ``F`` and ``G(ŵ)`` into RigNet; ``G`` and ``F`` stay in
eval mode with ``requires_grad`` off.

Going beyond the paper, ``RigNetConfig.edit_layers = K`` masks the edit to the first ``K`` (coarsest)
W+ layers: the decoders of the others output zero, so those layers keep ``w`` exactly. Chapter 5
measures why: a pose RigNet left free writes offsets into the fine (colour) layers too.

The per-layer linears are kept as ``nn.Linear`` modules (the checkpoint layout) and evaluated
all at once over their stacked weights (``impl='fast'``, the default; ``impl='ref'`` is the
per-layer loop, kept as the reference the tests compare against).

``‖·‖²`` in ``L_rec`` is taken per latent entry (divided by
``num_ws · w_dim``), so a loss weight means the same for a 10×256 toy
generator and the 18×512 FFHQ one.

A RigNet belongs to the generator it was trained on: its edits are offsets in that generator's W+
space, meaningless in another's. :mod:`~stylerig_lite.train_rignet` records the generator's identity
(:func:`~stylerig_lite.io_utils.module_sha256` of its weights and config, and the sha256 of its file
when it came from one) in the checkpoint; :meth:`RigNet.check_generator` refuses any other generator
with :class:`GeneratorMismatchError`. A RigNet with no record (built in memory, or saved before the
record existed) is not checked.

Public API: :data:`COMPONENTS`, :class:`RigNetConfig`, :class:`RigNet`
(``rignet(w, p_component)``, ``rignet.rig(w, p_full)``, ``save`` / ``RigNet.load``,
``record_generator`` / ``check_generator``, ``set_request_gain`` / ``calibrated`` for a slider calibration;
``rignet.bind(w)`` -> :class:`BoundRigNet` for the editor), the losses
:func:`rec_loss`, :func:`edit_loss`, :func:`consistency_loss` and
the whole objective :func:`rig_losses`. Training lives in
:mod:`stylerig_lite.train_rignet`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as nnf
from torch import nn

from . import morphable
from .checks import assert_finite, assert_shape
from .morphable import NUM_PARAMS, FaceParams
from .io_utils import (CheckpointError, GeneratorBinding, GeneratorMismatchError, atomic_torch_save,  # noqa: F401
                       checkpoint_state, load_network_file)
from .params import RIG_SLICES, rig_component
from .params import NUM_LANDMARKS

CHECKPOINT_FORMAT = "stylerig_lite.rignet/1"

# ----------------------------------------------------------------------------
# The controlled components.


@dataclasses.dataclass(frozen=True)
class RigComponent:
    """One thing a RigNet controls: a slice of the 196-vector and how it is normalised.

    Normalisation: RigNet's decoder sees ``(p - mean) / std`` with the mean and
    standard deviation of FaceWorld's parameter distribution
    (:func:`component_statistics`), so every input is of order one whether it
    is an angle in radians (std 0.1-0.3), an expression weight (0.15) or a
    light coefficient (0.2-0.4, mean 2.9 for the ambient term). The statistics
    are stored in the RigNet (buffers), so a checkpoint is self-contained; for
    another world (FFHQ) pass statistics of F's estimates instead.
    """

    name: str
    slice: slice  # into the [196] parameter vector
    description: str
    normalization: str = "standardised with FaceWorld's parameter distribution: (p - mean) / std"

    @property
    def size(self) -> int:
        return self.slice.stop - self.slice.start

    def take(self, params: torch.Tensor) -> torch.Tensor:
        """The component's entries ``[B, size]`` of full parameter vectors ``[B, 196]``."""
        assert_shape(params, [None, NUM_PARAMS], "parameter vector")
        return params[:, self.slice]


#: Component name -> :class:`RigComponent` (the table of :data:`~stylerig_lite.params.RIG_SLICES`).
#: Pose is the rotation only: the paper rigs rotation, and FaceWorld's translation is a
#: framing jitter, not something to edit.
COMPONENTS: Dict[str, RigComponent] = {
    "pose": RigComponent("pose", RIG_SLICES["pose"], "head rotation (yaw, pitch, roll) in radians"),
    "expression": RigComponent("expression", RIG_SLICES["expression"], "the 53 ICT/ARKit blendshape weights"),
    "light": RigComponent("light", RIG_SLICES["light"], "the 27 spherical-harmonics light coefficients"),
}


def get_component(name: str) -> RigComponent:
    """:data:`COMPONENTS` entry ``name`` (``"illumination"`` is an alias of ``"light"``), or a
    ``KeyError`` that lists the valid names."""
    return COMPONENTS[rig_component(name)]


_STATISTICS: Dict[Tuple[str, int, int], Tuple[torch.Tensor, torch.Tensor]] = {}


def component_statistics(name: str, *, count: int = 4096, seed: int = 12345) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean [P], std [P])`` of component ``name`` under FaceWorld's default parameter distribution.

    Only parameters are drawn (nothing is rendered), so this is cheap; the std
    is floored at 0.01 so that a dimension that barely varies cannot blow up.
    """
    component = get_component(name)
    key = (name, int(count), int(seed))
    if key not in _STATISTICS:
        params = morphable.sample_params(count, seed=seed).to_vector().double()  # [N, 196]
        values = params[:, component.slice]
        _STATISTICS[key] = (values.mean(0).float(), values.std(0).clamp_min(1e-2).float())
    mean, std = _STATISTICS[key]
    return mean.clone(), std.clone()


def splice(base: torch.Tensor, source: torch.Tensor, component: Union[str, RigComponent]) -> torch.Tensor:
    """``base [B, 196]`` with ``component``'s entries taken from ``source [B, 196]`` (differentiable in both)."""
    component = get_component(component) if isinstance(component, str) else component
    assert_shape(base, [None, NUM_PARAMS], "base parameters")
    assert_shape(source, [base.shape[0], NUM_PARAMS], "source parameters")
    s = component.slice
    return torch.cat([base[:, : s.start], source[:, s], base[:, s.stop :]], dim=1)


# ----------------------------------------------------------------------------
# The network.


@dataclasses.dataclass
class RigNetConfig:
    """Architecture of one RigNet (stored in its checkpoint)."""

    component: str = "pose"
    num_ws: int = 10  # W+ length of the generator (10 for the 64 px FaceWorld GAN, 18 for FFHQ 1024)
    w_dim: int = 256  # latent size (256 here, 512 for FFHQ)
    latent_dim: int = 32  # size of each l_i (the paper's 32)
    # Layer mask: only the first `edit_layers` W+ layers (the coarse ones) receive offsets; the
    # decoders of the others output zero, so those layers keep w exactly. None: all layers (the paper).
    edit_layers: Optional[int] = None

    def __post_init__(self) -> None:
        # Canonical name: a checkpoint written when the light rig was called "illumination" loads as "light".
        self.component = get_component(self.component).name
        for field in ("num_ws", "w_dim", "latent_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RigNetConfig.{field} must be a positive integer, got {value!r}")
        if self.edit_layers is not None and not (
            isinstance(self.edit_layers, int) and 1 <= self.edit_layers <= self.num_ws
        ):
            raise ValueError(
                f"RigNetConfig.edit_layers must be None (edit all layers) or an integer from 1 to num_ws={self.num_ws}, "
                f"got {self.edit_layers!r}"
            )

    @property
    def param_dim(self) -> int:
        return get_component(self.component).size

    @property
    def num_edited(self) -> int:
        """How many W+ layers (counted from the coarsest) the RigNet may change."""
        return self.num_ws if self.edit_layers is None else self.edit_layers

    @classmethod
    def for_generator(cls, G: Any, component: str, **overrides: Any) -> "RigNetConfig":
        """The config that fits generator ``G`` (reads ``G.num_ws`` and ``G.w_dim``)."""
        return cls(component=component, num_ws=int(G.num_ws), w_dim=int(G.w_dim), **overrides)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RigNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown RigNetConfig fields {sorted(unknown)}: the checkpoint is from a newer version")
        return cls(**data)


class RigNet(nn.Module, GeneratorBinding):
    """``ŵ = w + Dec([Enc(w), p])`` with one linear encoder and decoder per W+ layer.

    ``forward(w [B, num_ws, w_dim], p [B, P]) -> ŵ [B, num_ws, w_dim]`` where
    ``p`` is the component's parameters in their natural units (radians, blend
    weights, SH coefficients); :meth:`rig` takes full ``[B, 196]`` vectors.
    """

    def __init__(
        self,
        config: Optional[RigNetConfig] = None,
        *,
        param_mean: Optional[torch.Tensor] = None,
        param_std: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        self.config = config = config or RigNetConfig()
        self.component = get_component(config.component)
        P = self.component.size
        if param_mean is None or param_std is None:
            param_mean, param_std = component_statistics(config.component)
        assert_shape(param_mean, [P], "param_mean")
        assert_shape(param_std, [P], "param_std")
        if not bool((param_std > 0).all()):
            raise ValueError("param_std must be positive in every dimension")
        self.register_buffer("param_mean", param_mean.detach().float().clone())  # [P]
        self.register_buffer("param_std", param_std.detach().float().clone())  # [P]

        # One linear map per synthesis layer: coarse layers (pose) and fine ones (colour)
        # need different edits, and the paper gives each its own encoder and decoder.
        self.encoders = nn.ModuleList(nn.Linear(config.w_dim, config.latent_dim) for _ in range(config.num_ws))
        self.decoders = nn.ModuleList(nn.Linear(config.latent_dim + P, config.w_dim) for _ in range(config.num_ws))
        for decoder in self.decoders:
            # Zero decoder: d = 0, so an untrained RigNet returns w unchanged.
            nn.init.zeros_(decoder.weight)
            nn.init.zeros_(decoder.bias)
        # [num_ws, 1, 1]: 1 for the edited layers, 0 for the masked ones (config.edit_layers). The masked
        # layers keep their (zero, unused) modules so that every RigNet has the same checkpoint layout;
        # the mask, not their weights, guarantees they output zero. Derived from the config: not saved.
        layer_mask = torch.zeros(config.num_ws, 1, 1)
        layer_mask[: config.num_edited] = 1.0
        self.register_buffer("layer_mask", layer_mask, persistent=False)
        self.request_gain: Optional[torch.Tensor] = None  # [P] or None: see set_request_gain (not saved)
        self.record_generator(None)  # the generator it was trained on: not recorded, not checked

    # -- the generator it belongs to: record_generator / check_generator (io_utils.GeneratorBinding) --
    def _binding_label(self) -> str:
        return f"{self.config.component} RigNet"

    def _binding_fix(self) -> str:
        c = self.config.component
        return (f"Its edits are offsets in the W+ space of the generator it was trained on, meaningless in "
                f"another's: train a RigNet for this generator with `stylerig-lite train-rignet --component {c} "
                f"--generator CHECKPOINT --out rignet_{c}.pt`")

    # -- input checks -----------------------------------------------------------
    def _check_latents(self, w: torch.Tensor) -> None:
        c = self.config
        if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[1] == c.w_dim:
            raise ValueError(
                f"w has shape {tuple(w.shape)}: one w per sample, but RigNet edits W+ latents [B, {c.num_ws}, {c.w_dim}]; "
                f"broadcast with w[:, None].repeat(1, {c.num_ws}, 1)"
            )
        try:
            assert_shape(w, [None, c.num_ws, c.w_dim], "w (W+ latents)")
        except ValueError as error:
            raise ValueError(
                f"{error}. This {c.component} RigNet was built for a generator with {c.num_ws} ws x {c.w_dim} "
                "(RigNetConfig.for_generator(G, ...) makes one that fits another generator)"
            ) from None
        if not _all_finite(w):
            assert_finite(w, "w (W+ latents)")

    def _check_params(self, p: torch.Tensor, batch: int) -> None:
        P = self.component.size
        if isinstance(p, torch.Tensor) and p.ndim == 2 and p.shape[1] == NUM_PARAMS and P != NUM_PARAMS:
            raise ValueError(
                f"p has shape {tuple(p.shape)}: a full parameter vector, but forward() takes the {P} "
                f"{self.component.name} parameters; use rignet.rig(w, p) for full [B, 196] vectors"
            )
        assert_shape(p, [batch, P], f"p ({self.component.name} parameters: {self.component.description})")
        if not _all_finite(p):
            assert_finite(p, "p (target parameters)")

    # -- the network --------------------------------------------------------------
    def normalize_params(self, p: torch.Tensor) -> torch.Tensor:
        return (p - self.param_mean) / self.param_std

    def delta(self, w: torch.Tensor, p: torch.Tensor, *, impl: str = "fast") -> torch.Tensor:
        """The edit ``d = ŵ - w``: ``[B, num_ws, w_dim]``.

        ``impl='fast'``: all layers at once, two batched matrix products over the stacked
        per-layer weights (:meth:`stacked_weights`); ``impl='ref'``: the definition, a Python
        loop over the layers' ``nn.Linear`` modules. Both are differentiable and agree to float
        rounding (``tests/test_rignet.py``).
        """
        return self._delta(w, p, impl).contiguous()

    def _delta(self, w: torch.Tensor, p: torch.Tensor, impl: str) -> torch.Tensor:
        """:meth:`delta`, possibly as a non-contiguous view (``forward`` adds it to ``w`` anyway)."""
        self._check_latents(w)
        self._check_params(p, w.shape[0])
        p = self.normalize_params(p.to(self.param_mean.dtype))  # [B, P]
        if impl == "ref":
            return self._delta_reference(w, p)
        if impl != "fast":
            raise ValueError(f"impl must be 'fast' or 'ref', got {impl!r}")
        enc_w, enc_b, dec_w, dec_b = self.stacked_weights()
        num_ws, batch = w.shape[1], w.shape[0]
        codes = torch.baddbmm(enc_b, w.transpose(0, 1), enc_w)  # [num_ws, B, latent_dim]
        inputs = torch.cat([codes, p[None].expand(num_ws, batch, -1)], dim=2)  # [num_ws, B, latent_dim + P]
        return torch.baddbmm(dec_b, inputs, dec_w).transpose(0, 1)  # [B, num_ws, w_dim]

    def _delta_reference(self, w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The slow reference: one ``nn.Linear`` encoder and decoder call per layer (``p`` normalised)."""
        out = []
        for i, (encoder, decoder) in enumerate(zip(self.encoders, self.decoders)):
            if i >= self.config.num_edited:  # masked layer: no offset
                out.append(w.new_zeros(w.shape[0], self.config.w_dim))
                continue
            l_i = encoder(w[:, i])  # [B, latent_dim]
            out.append(decoder(torch.cat([l_i, p], dim=1)))  # [B, w_dim]
        return torch.stack(out, dim=1)

    def _weight_tensors(self) -> List[torch.Tensor]:
        # (the modules' own dicts: `layer.weight` would go through nn.Module.__getattr__, 40 times per call)
        return [t for layers in (self.encoders, self.decoders) for layer in layers._modules.values()
                for t in layer._parameters.values()] + [self.param_mean, self.param_std, self.layer_mask]

    def stacked_weights(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The per-layer linears stacked for batched products (the state dict keeps one module per layer).

        Returns ``(enc_w [num_ws, w_dim, latent_dim], enc_b [num_ws, 1, latent_dim],
        dec_w [num_ws, latent_dim + P, w_dim], dec_b [num_ws, 1, w_dim])``: transposed weights, so that
        layer ``i`` maps row vectors ``x @ w[i] + b[i]``. Without gradients to track (inference, or
        frozen weights) the stack is cached until a weight changes (in place: ``load_state_dict``, an
        optimizer step; or replaced: ``.to()``, a new layer); otherwise it is built on every call, so
        that gradients reach the per-layer weights. With a layer mask (``config.edit_layers``) the
        decoder stacks of the masked layers are zero (and pass no gradient back to their modules).
        """
        tensors = self._weight_tensors()
        cacheable = not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        key = [(t._version, t.data_ptr()) for t in tensors]  # in-place changes; replaced data (.to())
        cache = self.__dict__.get("_stacked_cache")
        if (cacheable and cache is not None and cache[1] == key and len(cache[0]) == len(tensors)
                and all(map(operator.is_, tensors, cache[0]))):  # replaced parameters or layers
            return cache[2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cacheable):
            enc_w = torch.stack([layer.weight for layer in self.encoders]).transpose(1, 2)
            enc_b = torch.stack([layer.bias for layer in self.encoders])[:, None]
            dec_w = torch.stack([layer.weight for layer in self.decoders]).transpose(1, 2)
            dec_b = torch.stack([layer.bias for layer in self.decoders])[:, None]
            if self.config.num_edited < self.config.num_ws:
                dec_w, dec_b = dec_w * self.layer_mask, dec_b * self.layer_mask
            stacked = (enc_w.contiguous(), enc_b, dec_w.contiguous(), dec_b)
        if cacheable:
            # Plain attribute (not a buffer): never in the state dict; holds the tensors it was built from.
            self.__dict__["_stacked_cache"] = (tensors, key, stacked)
        return stacked

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_stacked_cache", None)  # derived from the weights: not pickled, not deep-copied
        return state

    def forward(self, w: torch.Tensor, p: torch.Tensor, *, impl: str = "fast") -> torch.Tensor:
        """``ŵ = w + d``: ``[B, num_ws, w_dim]``, for target component parameters ``p [B, P]``."""
        return w + self._delta(w, p, impl)

    @torch.no_grad()
    def bind(self, w: torch.Tensor) -> "BoundRigNet":
        """This RigNet with the latents ``w [B, num_ws, w_dim]`` fixed: a callable ``params -> ŵ``.

        For the interactive editor, where ``w`` stays while the target parameters move with a
        slider: the encoder codes ``l_i = Enc_i(w_i)`` and their share of the decoder do not
        depend on ``p`` and are computed once; ``.then(other)`` chains another RigNet the same
        way. Inference only (no gradients). See :class:`BoundRigNet`.
        """
        return BoundRigNet(self, w)

    def rig(self, w: torch.Tensor, params: Union[torch.Tensor, FaceParams], *,
            source: Union[torch.Tensor, FaceParams, None] = None) -> torch.Tensor:
        """Edit ``w`` toward the full target parameters ``[B, 196]`` (only this RigNet's component is read).

        This is the editing-method signature ``method(w, p_target) -> ŵ`` that
        :mod:`stylerig_lite.evaluate` scores. ``source``: the parameters of ``w`` itself (``[B, 196]``,
        F's reading); given, and with a :attr:`request_gain` set, the request is first calibrated
        (:meth:`calibrated`). Without ``source`` the request goes to the network as it is.
        """
        batch = w.shape[0] if isinstance(w, torch.Tensor) else 1
        params = _full_params(params, batch)
        if source is not None and self.request_gain is not None:
            params = self.calibrated(params, source)
        return self(w, self.component.take(params))

    def set_request_gain(self, gain: Union[torch.Tensor, List[float], None]) -> "RigNet":
        """Scale requested changes by ``gain`` (``[P]``, one factor per component parameter; None: off).

        A slider calibration measured after training: the photoreal pose RigNet turns heads by a
        fraction of the asked change, which a reader of the drawn images measures on the validation
        split (``training/pose_calibration.py``, chapter 5); asking for ``change / fraction`` then
        gives the change asked for. :func:`stylerig_lite.pretrained.rignet` sets the shipped gains.
        Not part of the checkpoint. Returns ``self``.
        """
        if gain is None:
            self.request_gain = None
            return self
        gain = torch.as_tensor(gain, dtype=torch.float32).detach().clone()
        assert_shape(gain, [self.component.size], f"request_gain of the {self.config.component} RigNet")
        assert_finite(gain, "request_gain")
        if not bool((gain > 0).all()):
            raise ValueError(f"request_gain must be positive (a factor per parameter), got {gain.tolist()}")
        self.request_gain = gain
        return self

    def calibrated(self, params: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``params [B, 196]`` with this component's entries moved to ``source + request_gain * (params - source)``.

        ``source [B, 196]``: the edited latent's own parameters. The identity without a gain.
        """
        params = _full_params(params, 1)
        if self.request_gain is None:
            return params
        source = _full_params(source, params.shape[0])  # a FaceParams, [196] or [B, 196]
        s = self.component.slice
        gain = self.request_gain.to(params)
        out = params.clone()
        out[:, s] = source[:, s] + gain * (params[:, s] - source[:, s])
        return out

    def extra_repr(self) -> str:
        c = self.config
        masked = "" if c.edit_layers is None else f", edit_layers={c.edit_layers}"
        return f"component={c.component!r}, num_ws={c.num_ws}, w_dim={c.w_dim}, latent_dim={c.latent_dim}, p={c.param_dim}{masked}"

    # -- checkpoints ----------------------------------------------------------------
    def checkpoint(self) -> Dict[str, Any]:
        """The network as a plain dict (its config, and the generator it was trained on, travel with it)."""
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "state_dict": self.state_dict(),
                **self.binding_fields()}

    def save(self, path: Union[str, os.PathLike], *, extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write config + weights + normalisation atomically to ``path`` (``extra``: more top-level keys)."""
        data = self.checkpoint()
        if extra:
            data.update(extra)
        return atomic_torch_save(data, path)

    @classmethod
    def from_checkpoint(cls, data: Dict[str, Any]) -> "RigNet":
        state = checkpoint_state(data, CHECKPOINT_FORMAT, "RigNet checkpoint")
        try:
            net = cls(RigNetConfig.from_dict(data["config"]), param_mean=state["param_mean"],
                      param_std=state["param_std"])
            net.load_state_dict(state)
        except (KeyError, RuntimeError, TypeError) as error:
            raise CheckpointError(f"corrupt RigNet checkpoint ({type(error).__name__}: {error})") from None
        return net.record_generator(data.get("generator_sha256"), file_sha256=data.get("generator_file_sha256"))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, map_location: Any = "cpu", frozen: bool = True) -> "RigNet":
        """Load a RigNet saved by :meth:`save` or a :mod:`~stylerig_lite.train_rignet` checkpoint.

        Returns it in eval mode; ``frozen=True`` also turns off its gradients.
        """
        return load_network_file(cls.from_checkpoint, path, what="RigNet checkpoint", fmt=CHECKPOINT_FORMAT,
                                 nested_key="rignet", map_location=map_location, frozen=frozen,
                                 hint=f"train one with `stylerig-lite train-rignet --component pose --out {path}`")


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, cheaply: the inputs' checks run on every edit.

    A few numbers are checked as Python floats; more by one sum (NaN and inf propagate into it;
    a sum of finite numbers that overflows falls back to the exact test).
    """
    t = t.detach()
    if t.numel() <= 256:
        return all(map(math.isfinite, t.reshape(-1).tolist()))
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _full_params(params: Union[torch.Tensor, FaceParams], batch: int) -> torch.Tensor:
    """Full target parameter vectors ``[B, 196]`` from a FaceParams, a ``[196]`` or a ``[B, 196]`` tensor."""
    if isinstance(params, FaceParams):
        params = params.to_vector()
    if isinstance(params, torch.Tensor) and params.ndim == 1:
        params = params[None].expand(batch, -1)
    assert_shape(params, [None, NUM_PARAMS], "target parameters (full vector)")
    return params


class BoundRigNet:
    """``rignet.bind(w)``: ``bound(params [B, 196]) -> ŵ``, equal to ``rignet.rig(w, params)`` up to float rounding.

    ``bound.then(other)`` applies another RigNet to the result: ``other.rig(rignet.rig(w, p), p)``,
    again up to rounding. Both hold because a RigNet is affine in both inputs: per layer ``i``,
    with ``Dec_i = [D_i^l, D_i^p]`` and ``p̄ = (p - mean) / std``::

        rig(x, p)_i = x_i + (x_i E_i) D_i^l + c_i + p̄ D_i^p,      c_i = e_i D_i^l + d_i

    (``E_i``, ``e_i``: the encoder's weight and bias; ``d_i``: the decoder's bias). For a fixed ``w``
    the result of one RigNet, or of several applied in turn, is therefore affine in the parameters::

        ŵ = base + Σ_k p_k W_k        (p_k: the k-th RigNet's component of p, natural units)

    ``base`` and the ``W_k`` are computed once (:meth:`then` pushes them through the next RigNet's
    linear part ``x -> x + (x E) D^l``). A call costs one ``[B, P_k] x [P_k, num_ws * w_dim]``
    product for each RigNet whose parameters changed since the previous call (the others' products
    are kept) and a sum: moving one slider touches only its own RigNet's ``W_k``. The cache follows
    its inputs: if ``w`` is modified in place, or a RigNet's weights or statistics change, the next
    call recomputes it. Inference only: no gradients flow through a bound RigNet.
    """

    def __init__(self, rignet: RigNet, w: torch.Tensor, *, _chain: Tuple[RigNet, ...] = ()):
        rignet._check_latents(w)
        self.rignets: Tuple[RigNet, ...] = _chain + (rignet,)
        self.w = w
        self._refresh()

    @property
    def rignet(self) -> RigNet:
        """The last RigNet applied."""
        return self.rignets[-1]

    def then(self, rignet: RigNet) -> "BoundRigNet":
        """This edit followed by ``rignet`` (applied to its result, for the same target parameters)."""
        if not isinstance(rignet, RigNet):
            raise TypeError(f"BoundRigNet.then takes a RigNet, got {type(rignet).__name__}")
        return BoundRigNet(rignet, self.w, _chain=self.rignets)

    @torch.no_grad()
    def _refresh(self) -> None:
        w = self.w
        batch, num_ws, w_dim = w.shape
        base, weights, stacked_all = w.reshape(batch, num_ws * w_dim), [], []
        for net in self.rignets:
            stacked = net.stacked_weights()
            stacked_all.append(stacked)
            enc_w, enc_b, dec_w, dec_b = stacked
            dec_l, dec_p = dec_w[:, : net.config.latent_dim], dec_w[:, net.config.latent_dim :]
            # The linear part x -> x + (x E) D^l on base and on every earlier W_k (rows of latents).
            rows = torch.cat([base, *weights]).view(-1, num_ws, w_dim)  # [R, num_ws, w_dim]
            rows = rows + torch.bmm(torch.bmm(rows.transpose(0, 1), enc_w), dec_l).transpose(0, 1)
            rows = rows.reshape(-1, num_ws * w_dim)
            bias = torch.baddbmm(dec_b, enc_b, dec_l).reshape(1, -1)  # c: [1, num_ws * w_dim]
            sizes = [batch] + [len(weight) for weight in weights]
            base, *weights = torch.split(rows, sizes)
            dec_p = dec_p.transpose(0, 1).reshape(-1, num_ws * w_dim)  # [P, num_ws * w_dim]
            base = base + bias - (net.param_mean / net.param_std) @ dec_p
            weights.append(dec_p / net.param_std[:, None])  # p's share without the normalisation
        self._base = base.contiguous()
        self._weights = [weight.contiguous() for weight in weights]
        self._products: List[Optional[Tuple[list, torch.Tensor]]] = [None] * len(weights)
        self._key = (tuple(stacked_all), w._version)

    @torch.no_grad()
    def __call__(self, params: Union[torch.Tensor, FaceParams]) -> torch.Tensor:
        w = self.w
        batch = w.shape[0]
        params = _full_params(params, batch)
        ps = []
        for net in self.rignets:
            p = net.component.take(params)
            values = p.tolist()  # checked here, and the key of this component's product below
            if p.shape != (batch, net.component.size) or not all(map(math.isfinite, itertools.chain(*values))):
                net._check_params(p, batch)  # raises its error
            ps.append((p, values))
        stacked, version = self._key
        if version != w._version or any(s is not net.stacked_weights() for s, net in zip(stacked, self.rignets)):
            self._refresh()
        out = self._base
        for k, ((p, values), weight) in enumerate(zip(ps, self._weights)):
            product = self._products[k]
            if product is None or product[0] != values:  # this component moved: its product again
                product = self._products[k] = (values, p.to(weight.dtype) @ weight)
            out = out + product[1]
        return out.view(w.shape)


# ----------------------------------------------------------------------------
# What F says about G(w).


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients: how G and F take part in RigNet's training."""
    return module.eval().requires_grad_(False)


def estimator_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """GAN images ``[B, 3, R, R]`` in [-1, 1] -> F's input ``[B, 3, size, size]`` in [0, 1] (differentiable).

    Values past the range (GAN outputs overshoot) are clamped, as
    :meth:`ReconstructionNet.estimate` does; another resolution (a 16 px test
    generator, a 1024 px FFHQ one) is resized with antialiasing.
    """
    assert_shape(images, [None, 3, None, None], "generated images")
    x = ((images + 1.0) / 2.0).clamp(0.0, 1.0)
    if x.shape[-2:] != (size, size):
        x = nnf.interpolate(x, size=(size, size), mode="bilinear", antialias=x.shape[-1] > size, align_corners=False)
    return x


@dataclasses.dataclass
class RigSample:
    """A batch of latents with F's view of their images (all ``[B, ...]``; the image as F saw it)."""

    w: torch.Tensor  # [B, num_ws, w_dim]
    image: torch.Tensor  # [B, 3, S, S] in [0, 1], S = F's image size
    params: torch.Tensor  # [B, 196] F's estimate p_w
    landmarks: torch.Tensor  # [B, 68, 2] F's landmarks, pixels

    def __post_init__(self) -> None:
        batch = self.w.shape[0]
        assert_shape(self.image, [batch, 3, None, None], "RigSample.image")
        assert_shape(self.params, [batch, NUM_PARAMS], "RigSample.params")
        assert_shape(self.landmarks, [batch, NUM_LANDMARKS, 2], "RigSample.landmarks")

    @staticmethod
    def cat(a: "RigSample", b: "RigSample") -> "RigSample":
        return RigSample(*(torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in dataclasses.fields(RigSample)))


@torch.no_grad()
def describe(G: nn.Module, F: nn.Module, w: torch.Tensor, images: Optional[torch.Tensor] = None) -> RigSample:
    """Render ``w`` with G (unless its ``images`` in [-1, 1] are given) and estimate with F: a :class:`RigSample`."""
    if images is None:
        images = G.synthesis(w, noise_mode="const")
    x = estimator_input(images, F.config.image_size)
    out = F(x)
    return RigSample(w, x, out.params, out.landmarks)


# ----------------------------------------------------------------------------
# The losses.

RenderFn = Callable[..., Any]  # (params [B, 196], image [B, 3, H, W], landmarks [B, 68, 2]) -> RenderLossTerms


def rec_loss(w_rec: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``L_rec = ‖w_rec − w‖² / (num_ws · w_dim)`` per sample: ``[B]`` (``w_rec = RigNet(w, p_w)``)."""
    assert_shape(w, [None, None, None], "w")
    assert_shape(w_rec, list(w.shape), "w_rec")
    return (w_rec - w).pow(2).mean(dim=(1, 2))


def edit_loss(
    render: RenderFn,
    component: Union[str, RigComponent],
    p_hat: torch.Tensor,
    p_v: torch.Tensor,
    image_v: torch.Tensor,
    landmarks_v: torch.Tensor,
):
    """``L_edit = L_render(I_v, p̂ with its non-target components replaced by p_v's)``.

    Only the target component of ``p̂`` is scored: if the edit carried v's
    component across, the spliced vector is ``p_v`` itself and explains ``I_v``.
    Returns the :class:`~stylerig_lite.losses.RenderLossTerms` (``.total`` is ``[B]``).
    """
    return render(splice(p_v, p_hat, component), image_v, landmarks_v)


def consistency_loss(
    render: RenderFn,
    component: Union[str, RigComponent],
    p_hat: torch.Tensor,
    p_w: torch.Tensor,
    image_w: torch.Tensor,
    landmarks_w: torch.Tensor,
):
    """``L_consist = L_render(I_w, p̂ with its target component replaced by p_w's)``.

    Scores everything *but* the target component against the source image: an
    edit that also changed identity, expression or light is penalised here.
    """
    return render(splice(p_hat, p_w, component), image_w, landmarks_w)


@dataclasses.dataclass
class LossWeights:
    """Weights of the three terms; 0 drops a term (the ablations of the paper's table)."""

    rec: float = 1.0
    edit: float = 1.0
    consist: float = 1.0

    def __post_init__(self) -> None:
        for name in ("rec", "edit", "consist"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")


def rig_losses(
    rignet: RigNet,
    G: nn.Module,
    F: nn.Module,
    render: RenderFn,
    sample_w: RigSample,
    sample_v: RigSample,
    weights: Optional[LossWeights] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The siamese StyleRig objective for pairs ``(w, v)``: ``(scalar loss, {term: [2B] per edit})``.

    Every pair is edited both ways (``w → v`` and ``v → w``) in one batch of
    ``2B``. ``G`` and ``F`` must be frozen (see :func:`freeze`); terms with
    weight 0 are not computed (an ablation of edit *and* consist skips G and F).
    ``F`` is the image F (``p̂ = F(G(ŵ))``: a generator pass per edit) or, as in the paper, the
    latent F (:class:`~stylerig_lite.latent_f.LatentF`, ``reads_latents``: ``p̂ = F(ŵ)``, ``G``
    unused and may be None); the samples then carry corpus images and detected landmarks.
    """
    weights = weights or LossWeights()
    component = rignet.component
    source = RigSample.cat(sample_w, sample_v)  # what is edited
    target = RigSample.cat(sample_v, sample_w)  # what it is edited toward
    parts: Dict[str, torch.Tensor] = {}
    total = source.w.new_zeros(())
    if weights.rec > 0:
        parts["rec"] = rec_loss(rignet(source.w, component.take(source.params)), source.w)
        total = total + weights.rec * parts["rec"].mean()
    if weights.edit > 0 or weights.consist > 0:
        w_hat = rignet(source.w, component.take(target.params))  # [2B, num_ws, w_dim]
        if getattr(F, "reads_latents", False):
            p_hat = F(w_hat)  # the paper's way: the latent F reads ŵ, no generator pass
        else:
            images = G.synthesis(w_hat, noise_mode="const")  # gradients reach RigNet through G ...
            p_hat = F(estimator_input(images, F.config.image_size)).params  # ... and through the image F
        if weights.edit > 0:
            terms = edit_loss(render, component, p_hat, target.params, target.image, target.landmarks)
            parts.update(edit=terms.total, edit_photo=terms.photometric, edit_land=terms.landmark)
            total = total + weights.edit * terms.total.mean()
        if weights.consist > 0:
            terms = consistency_loss(render, component, p_hat, source.params, source.image, source.landmarks)
            parts.update(consist=terms.total, consist_photo=terms.photometric, consist_land=terms.landmark)
            total = total + weights.consist * terms.total.mean()
        # How far the edited image's target component is from the target (the quantity being controlled).
        parts["target_error"] = (component.take(p_hat) - component.take(target.params)).abs().mean(dim=1).detach()
    return total, parts


__all__ = [
    "BoundRigNet",
    "COMPONENTS",
    "GeneratorMismatchError",
    "LossWeights",
    "RigComponent",
    "RigNet",
    "RigNetConfig",
    "RigSample",
    "component_statistics",
    "consistency_loss",
    "describe",
    "edit_loss",
    "estimator_input",
    "freeze",
    "get_component",
    "rec_loss",
    "rig_losses",
    "splice",
]
