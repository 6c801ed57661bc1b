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

``‖·‖²`` in ``L_rec`` is taken per latent entry (divided by
``num_ws · w_dim``), so a loss weight means the same for a 10×256 toy
generator and the 18×512 FFHQ one.

Public API: :data:`COMPONENTS`, :class:`RigNetConfig`, :class:`RigNet`
(``rignet(w, p_component)``, ``rignet.rig(w, p_full)``, ``save`` / ``RigNet.load``),
the losses :func:`rec_loss`, :func:`edit_loss`, :func:`consistency_loss` and
the whole objective :func:`rig_losses`. Training lives in
:mod:`stylerig_lite.train_rignet`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as nnf
from torch import nn

from . import morphable
from .checks import assert_finite, assert_shape
from .morphable import NUM_PARAMS, SLICES, FaceParams

CHECKPOINT_FORMAT = "stylerig_lite.rignet/1"
NUM_LANDMARKS = 68

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


_POSE = SLICES["pose"]

#: Component name -> :class:`RigComponent`. Pose is the rotation only: the paper rigs
#: rotation, and FaceWorld's translation is a framing jitter, not something to edit.
COMPONENTS: Dict[str, RigComponent] = {
    "pose": RigComponent("pose", slice(_POSE.start, _POSE.start + 3), "head rotation (yaw, pitch, roll) in radians"),
    "expression": RigComponent("expression", SLICES["expression"], "the 53 ICT/ARKit blendshape weights"),
    "illumination": RigComponent("illumination", SLICES["light"], "the 27 spherical-harmonics light coefficients"),
}


def get_component(name: str) -> RigComponent:
    """:data:`COMPONENTS` entry ``name``, or a ``KeyError`` that lists the valid names."""
    if name not in COMPONENTS:
        hint = " (RigNet calls the light 'illumination')" if name == "light" else ""
        raise KeyError(f"unknown RigNet component {name!r}{hint}; expected one of {list(COMPONENTS)}")
    return COMPONENTS[name]


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

    def __post_init__(self) -> None:
        get_component(self.component)
        for field in ("num_ws", "w_dim", "latent_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RigNetConfig.{field} must be a positive integer, got {value!r}")

    @property
    def param_dim(self) -> int:
        return get_component(self.component).size

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


class RigNet(nn.Module):
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
        assert_finite(w, "w (W+ latents)")

    def _check_params(self, p: torch.Tensor, batch: int) -> None:
        P = self.component.size
        if isinstance(p, torch.Tensor) and p.ndim == 2 and p.shape[1] == NUM_PARAMS and P != NUM_PARAMS:
            raise ValueError(
                f"p has shape {tuple(p.shape)}: a full parameter vector, but forward() takes the {P} "
                f"{self.component.name} parameters; use rignet.rig(w, p) for full [B, 196] vectors"
            )
        assert_shape(p, [batch, P], f"p ({self.component.name} parameters: {self.component.description})")
        assert_finite(p, "p (target parameters)")

    # -- the network --------------------------------------------------------------
    def normalize_params(self, p: torch.Tensor) -> torch.Tensor:
        return (p - self.param_mean) / self.param_std

    def delta(self, w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The edit ``d = ŵ - w``: ``[B, num_ws, w_dim]``."""
        self._check_latents(w)
        self._check_params(p, w.shape[0])
        p = self.normalize_params(p.to(self.param_mean.dtype))  # [B, P]
        out = []
        for i, (encoder, decoder) in enumerate(zip(self.encoders, self.decoders)):
            l_i = encoder(w[:, i])  # [B, latent_dim]
            out.append(decoder(torch.cat([l_i, p], dim=1)))  # [B, w_dim]
        return torch.stack(out, dim=1)

    def forward(self, w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``ŵ = w + d``: ``[B, num_ws, w_dim]``, for target component parameters ``p [B, P]``."""
        return w + self.delta(w, p)

    def rig(self, w: torch.Tensor, params: Union[torch.Tensor, FaceParams]) -> torch.Tensor:
        """Edit ``w`` toward the full target parameters ``[B, 196]`` (only this RigNet's component is read).

        This is the editing-method signature ``method(w, p_target) -> ŵ`` that
        :mod:`stylerig_lite.evaluate` scores.
        """
        if isinstance(params, FaceParams):
            params = params.to_vector()
        if isinstance(params, torch.Tensor) and params.ndim == 1:
            params = params[None].expand(w.shape[0] if isinstance(w, torch.Tensor) else 1, -1)
        assert_shape(params, [None, NUM_PARAMS], "target parameters (full vector)")
        return self(w, self.component.take(params))

    def extra_repr(self) -> str:
        c = self.config
        return f"component={c.component!r}, num_ws={c.num_ws}, w_dim={c.w_dim}, latent_dim={c.latent_dim}, p={c.param_dim}"

    # -- checkpoints ----------------------------------------------------------------
    def checkpoint(self) -> Dict[str, Any]:
        """The network as a plain dict (its config travels with it)."""
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "state_dict": self.state_dict()}

    def save(self, path: Union[str, os.PathLike], *, extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write config + weights + normalisation atomically to ``path`` (``extra``: more top-level keys)."""
        from .io_utils import atomic_torch_save

        data = self.checkpoint()
        if extra:
            data.update(extra)
        return atomic_torch_save(data, path)

    @classmethod
    def from_checkpoint(cls, data: Dict[str, Any]) -> "RigNet":
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a RigNet checkpoint: expected format {CHECKPOINT_FORMAT!r}, found {found!r}")
        state = {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()}
        net = cls(RigNetConfig.from_dict(data["config"]), param_mean=state["param_mean"], param_std=state["param_std"])
        net.load_state_dict(state)
        return net

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, map_location: Any = "cpu", frozen: bool = True) -> "RigNet":
        """Load a RigNet saved by :meth:`save` or a :mod:`~stylerig_lite.train_rignet` checkpoint.

        Returns it in eval mode; ``frozen=True`` also turns off its gradients.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"RigNet checkpoint not found: {path} (train one with "
                f"`stylerig-lite train-rignet --component pose --out {path}`)"
            )
        net = cls.from_checkpoint(torch.load(path, map_location=map_location, weights_only=True)).eval()
        if frozen:
            net.requires_grad_(False)
        return net


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
        images = G.synthesis(w_hat, noise_mode="const")  # gradients reach RigNet through G ...
        p_hat = F(estimator_input(images, F.config.image_size)).params  # ... and through F
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
    "COMPONENTS",
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
