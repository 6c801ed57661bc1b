"""The interactive editor: sliders for pose, expression and light drive RigNet live.

StyleRig's promise is a *rig*: move a 3DMM parameter and the GAN face follows.
This module turns the trained pieces into an app::

    from stylerig_lite.editing import EditorApp
    EditorApp.default()                         # embedded networks, in Jupyter / Colab / Voila

    app = EditorApp(G, {"pose": rig_pose, "expression": rig_expr, "light": rig_light}, F, face_model)
    app                                         # the widget (sliders, images, transfer, reset, save)

It is built in three layers, so that everything but the widgets is testable without a browser:

* :class:`EditorState` (no widgets): the latent ``w`` of the current face, its estimated
  parameters ``p_w = F(G(w))`` (the *source*), and the *target* parameters the sliders edit.
  A frame is ``w_hat = rig(w, p_target)`` for each rigged component whose target differs from the
  source, ``image = G.synthesis(w_hat)`` and the 3DMM rendering of ``p_target``, shown side by side
  as in the paper's figures.
* :class:`LatestOnly`: coalesces slider events. A slider move only records the value (cheap) and
  asks for a frame; one worker renders the *latest* state, and a render in progress is followed
  by at most one more render, of whatever the sliders say when it ends. Intermediate values are
  never rendered, so a fast drag cannot queue up stale frames.
* :class:`EditorApp`: the ipywidgets front end.

The rig protocol is a callable ``rig(w [B, num_ws, w_dim], p_target [B, 196]) -> w_hat`` (same
shape as ``w``), one per component name in :data:`RIG_COMPONENTS`. RigNet implements it; so do the
simple fakes of the tests. A rig may also offer ``bind(w) -> bound(p_target) -> w_hat`` (RigNet
does): the editor binds the latent it edits once, so that a slider move costs only what depends
on the slider (:meth:`EditorState.edited_latent`). The generator needs ``mapping(z, c, truncation_psi=...)`` and
``synthesis(ws, noise_mode=...)`` (our :class:`~stylerig_lite.stylegan2.Generator` and official
NVlabs checkpoints alike, any ``num_ws x w_dim``); the estimator needs
``estimate(images, value_range=(-1, 1)) -> (FaceParams, landmarks)``.

The static book has no kernel, so :func:`edit_frames`, :func:`edit_animation` and
:func:`animation_html` precompute slider sweeps as animations for chapter 6.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as TF

from .checks import assert_shape
from .morphable import EXPRESSION_NAMES, SLICES, FaceModel, FaceParams
from .params import RIG_ALIASES, RIG_COMPONENTS, rig_component
from .io_utils import image_png, to_png  # noqa: F401  (re-exported: the editor's PNG encoders)
from .render_points import PREVIEW_PARTS, PreviewRenderer  # noqa: F401  (re-exported)
from .seeding import latents_for_seeds
from .shading import gamma_to_light, light_direction, light_to_gamma  # noqa: F401  (re-exported)

# The components a rig can control, in the order the rigs are applied, are params.RIG_COMPONENTS; each is
# named after the parameter block it edits ("illumination" is accepted for "light").

Rig = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------ sliders
@dataclasses.dataclass(frozen=True)
class SliderSpec:
    """One slider: its range, step, unit, the rig component it edits and the label shown."""

    label: str
    low: float
    high: float
    step: float
    unit: str
    component: str  # "pose", "expression" or "light"


#: Named main-expression sliders and the ICT/ARKit blendshapes each one sets (to the same weight).
EXPRESSION_GROUPS: Dict[str, Tuple[str, ...]] = {
    "jawOpen": ("jawOpen",),
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "browRaise": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
}

# Ranges: pose covers FaceWorld's training spread (±30° yaw, ±15° pitch, ±12° roll) with margin;
# beyond it RigNet extrapolates, which the chapter shows as a limit. Expression weights are the
# ARKit range [0, 1]. Light: azimuth/elevation of the light direction (0, 0 = light at the camera;
# +azimuth = from image right, +elevation = from above), its intensity and the ambient level.
SLIDERS: Dict[str, SliderSpec] = {
    "yaw": SliderSpec("yaw", -60.0, 60.0, 1.0, "°", "pose"),
    "pitch": SliderSpec("pitch", -40.0, 40.0, 1.0, "°", "pose"),
    "roll": SliderSpec("roll", -40.0, 40.0, 1.0, "°", "pose"),
    "jawOpen": SliderSpec("jaw open", 0.0, 1.0, 0.05, "", "expression"),
    "smile": SliderSpec("smile", 0.0, 1.0, 0.05, "", "expression"),
    "blink": SliderSpec("blink", 0.0, 1.0, 0.05, "", "expression"),
    "browRaise": SliderSpec("brow raise", 0.0, 1.0, 0.05, "", "expression"),
    "light_azimuth": SliderSpec("light azimuth", -90.0, 90.0, 5.0, "°", "light"),
    "light_elevation": SliderSpec("light elevation", -90.0, 90.0, 5.0, "°", "light"),
    "light_intensity": SliderSpec("light intensity", 0.0, 1.5, 0.05, "", "light"),
    "light_ambient": SliderSpec("ambient light", 0.0, 1.5, 0.05, "", "light"),
}
EXPRESSION_SPEC = SliderSpec("expression weight", 0.0, 1.0, 0.05, "", "expression")
LIGHT_SLIDERS: Tuple[str, ...] = ("light_azimuth", "light_elevation", "light_intensity", "light_ambient")


def slider_spec(name: str) -> SliderSpec:
    """The spec of a slider name: a named slider or any of the 53 expression names."""
    if name in SLIDERS:
        return SLIDERS[name]
    if name in EXPRESSION_NAMES:
        return dataclasses.replace(EXPRESSION_SPEC, label=name)
    valid = list(SLIDERS)
    close = difflib.get_close_matches(name, valid + list(EXPRESSION_NAMES), n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise KeyError(
        f"unknown slider {name!r}.{hint} Valid names: {valid}, or any of the 53 expression names "
        f"{list(EXPRESSION_NAMES)}"
    )


def check_expression_name(name: str) -> str:
    """Return ``name`` if it is one of the 53 ICT/ARKit expressions, else a ``KeyError`` listing them."""
    if name not in EXPRESSION_NAMES:
        close = difflib.get_close_matches(name, EXPRESSION_NAMES, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"unknown expression {name!r}.{hint} Valid names (53): {list(EXPRESSION_NAMES)}")
    return name


def clamp_to_spec(name: str, value: float) -> Tuple[float, Optional[str]]:
    """``(value clamped to the slider's range, message or None)``."""
    spec = slider_spec(name)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"slider {name!r} needs a finite number, got {value!r}")
    clamped = min(max(value, spec.low), spec.high)
    if clamped != value:
        return clamped, (f"{spec.label} {value:g}{spec.unit} is outside [{spec.low:g}, {spec.high:g}]{spec.unit}; "
                         f"clamped to {clamped:g}{spec.unit}")
    return clamped, None


# --------------------------------------------------------------------------------------- coalescing
T = TypeVar("T")


class LatestOnly(Generic[T]):
    """Render only the latest request: the debounce behind the sliders.

    ``request()`` is cheap and may be called for every slider event. With ``background=True`` a
    worker thread runs ``render()`` and passes the result to ``deliver()``; requests that arrive
    while it renders only set a flag, so after the render in progress exactly one more render
    follows (of the state at that time), however many requests came in. ``render`` must read the
    current state itself (it gets no arguments), which is what makes intermediate values vanish.

    With ``background=False`` (tests, scripts) ``request()`` renders in the calling thread; a
    request made while rendering (e.g. from ``deliver``) is coalesced the same way.
    ``rendered`` counts the renders done; ``wait()`` blocks until the worker is idle.
    """

    def __init__(self, render: Callable[[], T], deliver: Callable[[T], None], *, background: bool = True,
                 on_error: Optional[Callable[[BaseException], None]] = None):
        self._render, self._deliver, self._on_error = render, deliver, on_error
        self.background = background
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._dirty = False
        self._busy = False
        self.rendered = 0
        self.requested = 0

    def request(self) -> None:
        with self._lock:
            self.requested += 1
            self._dirty = True
            if self._busy:
                return  # the running loop picks the latest state up when the current render ends
            self._busy = True
            self._idle.clear()
        if self.background:
            threading.Thread(target=self._loop, name="stylerig-editor-render", daemon=True).start()
        else:
            self._loop()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._dirty:
                    self._busy = False
                    self._idle.set()
                    return
                self._dirty = False
            try:
                result = self._render()
                self.rendered += 1
                self._deliver(result)
            except BaseException as error:  # noqa: BLE001 - a failed frame must not kill the editor
                if self._on_error is None:
                    with self._lock:
                        self._busy, self._dirty = False, False
                        self._idle.set()
                    raise
                self._on_error(error)

    @property
    def busy(self) -> bool:
        return self._busy

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until no render is running or pending; False on timeout."""
        return self._idle.wait(timeout)


# -------------------------------------------------------------------------------------------- state
@dataclasses.dataclass
class Frame:
    """One rendered editor frame."""

    image: torch.Tensor  # [3, R, R] GAN image in [-1, 1]
    render: Optional[torch.Tensor]  # [3, h, h] 3DMM rendering of the target in [0, 1], or None
    target: FaceParams  # batch 1
    w_hat: torch.Tensor  # [1, num_ws, w_dim]
    applied: Tuple[str, ...]  # rig components applied to reach w_hat
    estimate: Optional[FaceParams]  # F on the shown image, when asked for
    timings_ms: Dict[str, float]
    version: int  # the state's edit counter when the frame was computed


class ModuleRig:
    """A module's ``rig(w, p_target)`` method as the editor's rig, with the module's ``bind`` if it has one.

    ``bind(w) -> callable(p_target) -> w_hat`` is the optional fast path of the rig protocol
    (:meth:`~stylerig_lite.rignet.RigNet.bind`): the editor binds the latent being edited once and
    then only passes the slider's target parameters (:meth:`EditorState.edited_latent`).
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        bind = getattr(module, "bind", None)
        self.bind: Optional[Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = \
            bind if callable(bind) else None

    def __call__(self, w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        return self.module.rig(w, p_target)

    def __repr__(self) -> str:
        return f"ModuleRig({type(self.module).__name__})"


def as_rig(rig: Any, name: str = "rig") -> Rig:
    """The ``rig(w, p_target [B, 196]) -> w_hat`` callable of a rig object.

    A :class:`~stylerig_lite.rignet.RigNet` module's ``forward`` takes only its component's
    parameters; its :meth:`rig` method takes the full vector, so that is the one used (wrapped in
    a :class:`ModuleRig`, which also carries the module's ``bind``). Plain callables are used as
    they are (one with a ``bind`` attribute gets the same fast path).
    """
    method = getattr(rig, "rig", None)
    if isinstance(rig, torch.nn.Module) and callable(method):
        return ModuleRig(rig)
    if not callable(rig):
        raise TypeError(f"rigs[{name!r}] must be callable as rig(w, p_target) -> w_hat, got {type(rig).__name__}")
    return rig


def _frozen_synthesis(generator: Any):
    """A :class:`~stylerig_lite.stylegan2.frozen.FrozenSynthesis` for our StyleGAN2, else None (eager)."""
    from .stylegan2 import SynthesisNetwork
    from .stylegan2.frozen import FrozenSynthesis

    synthesis = getattr(generator, "synthesis", None)
    return FrozenSynthesis(synthesis) if isinstance(synthesis, SynthesisNetwork) else None


class EditorState:
    """The editor without widgets: a face (latent), its source parameters, the target the sliders edit.

    Args:
        generator: frozen StyleGAN2 (``mapping``/``synthesis``; any ``num_ws x w_dim``).
        rigs: ``{"pose": rig, "expression": rig, "light": rig}``; any subset. A rig is
            ``rig(w [B, num_ws, w_dim], p_target [B, 196]) -> w_hat``. Sliders of a component
            without a rig still move the 3DMM rendering, but not the GAN image. A rig with a
            ``check_generator(G)`` method (a RigNet) is asked first whether it belongs to
            ``generator``; one trained on another generator raises
            :class:`~stylerig_lite.rignet.GeneratorMismatchError`.
        estimator: F, ``estimate(images, value_range=(-1, 1)) -> (FaceParams, landmarks)``; it
            gives the source parameters ``p_w = F(G(w))`` that the sliders start from. A latent F
            (:class:`~stylerig_lite.latent_f.LatentF`, the photoreal generator's) reads ``w`` instead.
        image_size: the side of the frames (None: the generator's; the photoreal generator draws 256 px
            directly, see :func:`stylerig_lite.corpus.synthesize`).
        face_model: the 3DMM for the target rendering, or None to show no rendering.
        seed: the initial face; ``truncation_psi``: truncation of the mapping (0.7 = typical faces).
        preview_size: side of the 3DMM rendering in pixels (see :class:`PreviewRenderer`).
        estimate_shown: also run F on each shown image (``Frame.estimate``): an honest readout of
            what the edit achieved, at the cost of one F pass per frame.
        delta: apply the rigs as a difference, ``ŵ = w + rig(w, target) - rig(w, source)``, so that the
            rig's reconstruction error ``rig(w, F(w)) - w`` cancels. A generated face needs no such
            correction (L_rec trained it away); an embedded photo does (its W+ rows differ, unlike any
            code the rig saw): on nine embedded validation faces the judged turn error fell from a median
            5.0° to 3.8° (chapter 7, section 5; :func:`stylerig_lite.photo.edit_embedding` uses it).
        calibrate: pass a calibrated RigNet (one with a ``request_gain``, as the photoreal pose RigNet
            :func:`~stylerig_lite.pretrained.rignet` returns) the calibrated request, measured from the
            source parameters (:meth:`~stylerig_lite.rignet.RigNet.calibrated`). False asks for the
            slider's change as it is (the photo turn loop measures and corrects the turn itself).
    """

    def __init__(self, generator, rigs: Mapping[str, Rig], estimator, face_model: Optional[FaceModel] = None, *,
                 seed: int = 0, truncation_psi: float = 0.7, preview_size: int = 40, estimate_shown: bool = False,
                 image_size: Optional[int] = None, delta: bool = False, calibrate: bool = True):
        unknown = [name for name in rigs if RIG_ALIASES.get(name, name) not in RIG_COMPONENTS]
        if unknown:
            raise KeyError(f"unknown rig component(s) {sorted(unknown)}; expected keys among {list(RIG_COMPONENTS)}")
        for rig in rigs.values():  # a RigNet trained on another generator: refused here, not shown as garbage
            check = getattr(rig, "check_generator", None)
            if callable(check):
                check(generator)
        if getattr(estimator, "reads_latents", False):
            estimator.check_generator(generator)
        self.generator = generator
        self.image_size = image_size
        self._frozen = _frozen_synthesis(generator) if image_size is None else None
        self.rigs = {rig_component(name): as_rig(rig, name) for name, rig in rigs.items()}
        self.estimator = estimator
        self.face_model = face_model
        self.truncation_psi = float(truncation_psi)
        self.estimate_shown = bool(estimate_shown)
        self.delta = bool(delta)
        self.calibrate = bool(calibrate)
        self.preview = PreviewRenderer(face_model, preview_size) if face_model is not None else None
        self.message = ""  # the last clamp / transfer note, shown by the app
        self.version = 0  # bumped on every edit; frames carry it
        self._lock = threading.RLock()
        # applied components -> (rigs, w, w._version, bound chain, how many rigs it covers); see edited_latent
        self._bound: Dict[Tuple[str, ...], Tuple[Tuple[Rig, ...], torch.Tensor, int, Optional[Callable], int]] = {}
        self._source_values: Optional[Tuple[FaceParams, List[List[float]]]] = None  # see _changed
        # delta: applied components -> (w, w._version, rigs(w, source))
        self._at_source: Dict[Tuple[str, ...], Tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.set_seed(seed)

    # -- the face being edited ------------------------------------------------------------------
    @torch.no_grad()
    def set_seed(self, seed: int) -> None:
        """Edit the face of ``seed`` (z ~ N(0, I) with that seed, then the mapping network)."""
        self.set_latent(latents_for_seeds(self.generator, [seed], self.truncation_psi), seed=int(seed))

    @torch.no_grad()
    def set_latent(self, w: torch.Tensor, *, seed: Optional[int] = None) -> None:
        """Edit any latent ``w [1, num_ws, w_dim]`` (e.g. a projected photo); resets the sliders."""
        assert_shape(w, [1, None, None], "w (one latent [1, num_ws, w_dim])")
        with self._lock:
            self.seed = seed
            self.w = w.detach().clone()
            self._bound.clear()
            self._at_source.clear()
            self.source_image = self._synthesize(self.w)  # [1, 3, R, R]
            self.source = self._estimate(self.source_image, self.w).detach()
            self.reset()

    def _synthesize(self, w: torch.Tensor) -> torch.Tensor:
        if self._frozen is not None:  # the FaceWorld StyleGAN2: same image, half the time (stylegan2.frozen)
            return self._frozen(w)
        if self.image_size is None:
            return self.generator.synthesis(w, noise_mode="const")
        from .corpus import synthesize

        return synthesize(self.generator, w, image_size=self.image_size)

    def _estimate(self, images: torch.Tensor, w: Optional[torch.Tensor] = None) -> FaceParams:
        """F on GAN images ``[B, 3, R, R]`` in [-1, 1], resized to F's input size if needed (a latent F reads ``w``)."""
        if getattr(self.estimator, "reads_latents", False):
            with torch.no_grad():
                return self.estimator.estimate(w).to("cpu")
        images = images.clamp(-1, 1)  # F judges what the user sees (an untrained G can overshoot far)
        size = getattr(getattr(self.estimator, "config", None), "image_size", None)
        if size is not None and images.shape[-1] != size:
            images = TF.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=images.shape[-1] > size)
        params, _ = self.estimator.estimate(images, value_range=(-1, 1))
        return params.to("cpu")

    # -- sliders --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the source: target = F(G(w)), light sliders fitted to the source light."""
        with self._lock:
            self.target = FaceParams.from_vector(self.source.to_vector().clone())
            self.light_controls = gamma_to_light(self.source.light)
            self.message = ""
            self.version += 1

    def slider_names(self) -> List[str]:
        return list(SLIDERS)

    def slider_value(self, name: str) -> float:
        """The current value of a slider (degrees for angles), read from the target."""
        slider_spec(name)
        with self._lock:
            if name in ("yaw", "pitch", "roll"):
                return math.degrees(float(self.target.pose[0, ("yaw", "pitch", "roll").index(name)]))
            if name in EXPRESSION_GROUPS:
                return float(np.mean([self.expression(n) for n in EXPRESSION_GROUPS[name]]))
            if name in LIGHT_SLIDERS:
                return float(self.light_controls[name])
            return self.expression(name)

    def expression(self, name: str) -> float:
        """Target weight of one of the 53 expressions."""
        return float(self.target.expression[0, EXPRESSION_NAMES.index(check_expression_name(name))])

    def set_slider(self, name: str, value: float) -> float:
        """Set a slider (angles in degrees). Out-of-range values are clamped and noted in ``message``.

        Names: :data:`SLIDERS` (yaw, pitch, roll, jawOpen, smile, blink, browRaise, light_*) or any
        of the 53 expression names. Returns the value actually set.
        """
        value, note = clamp_to_spec(name, value)
        with self._lock:
            if name in ("yaw", "pitch", "roll"):
                pose = self.target.pose.clone()
                pose[0, ("yaw", "pitch", "roll").index(name)] = math.radians(value)
                self.target = self.target.replace(pose=pose)
            elif name in LIGHT_SLIDERS:
                self.light_controls[name] = value
                c = self.light_controls
                gamma = light_to_gamma(c["light_azimuth"], c["light_elevation"], c["light_intensity"], c["light_ambient"])
                self.target = self.target.replace(light=gamma)
            else:
                names = EXPRESSION_GROUPS.get(name, (name,))
                self.target = self.target.with_expression(**{n: value for n in names})
            self.message = note or ""
            self.version += 1
        return value

    def set_expression(self, name: str, value: float) -> float:
        """Set one of the 53 expression weights by name (a ``KeyError`` lists them for a typo)."""
        return self.set_slider(check_expression_name(name), value)

    # -- transfer -------------------------------------------------------------------------------
    @torch.no_grad()
    def transfer(self, component: str, other_seed: int) -> FaceParams:
        """Copy pose, expression or light of another face (``other_seed``) into the target.

        The other face's parameters are estimated by F from its GAN image, as in the paper's
        transfer application: only the chosen component changes. Returns the other face's parameters.
        """
        if RIG_ALIASES.get(component, component) not in RIG_COMPONENTS:
            raise KeyError(f"unknown component {component!r} to transfer; expected one of {list(RIG_COMPONENTS)} "
                           "('illumination' is accepted for 'light')")
        component = rig_component(component)
        other = self._estimate(self._synthesize(latents_for_seeds(self.generator, [other_seed], self.truncation_psi)))
        key = component  # the parameter block the rig edits has the rig's name
        with self._lock:
            self.target = self.target.replace(**{key: other.component(key).clone()})
            if key == "light":
                self.light_controls = gamma_to_light(other.light)
            self.message = f"{component} copied from seed {int(other_seed)}"
            if component not in self.rigs:
                self.message += f" (no {component} rig: the GAN image cannot follow)"
            self.version += 1
        return other

    # -- frames ---------------------------------------------------------------------------------
    def target_params(self) -> FaceParams:
        """A copy of the target parameters (batch 1)."""
        with self._lock:
            return FaceParams.from_vector(self.target.to_vector())  # to_vector concatenates: a new tensor

    def changed_components(self, target: Optional[FaceParams] = None) -> Tuple[str, ...]:
        """Rig components whose target differs from the source (the rigs a frame applies)."""
        target = target or self.target_params()
        return self._changed(target.to_vector())

    def _changed(self, vector: torch.Tensor) -> Tuple[str, ...]:
        """:meth:`changed_components` of a target vector ``[B, 196]``.

        Compared as Python floats, which is ``torch.equal`` per component (NaN differs from
        everything, -0.0 equals 0.0) for the price of two ``tolist`` calls instead of six slices
        and three comparisons; the source's numbers are kept until the source changes.
        """
        cached = self._source_values
        if cached is None or cached[0] is not self.source:
            cached = self._source_values = (self.source, self.source.to_vector().tolist())
        values, source = vector.tolist(), cached[1]
        return tuple(c for c in RIG_COMPONENTS
                     if [row[SLICES[c]] for row in values]
                     != [row[SLICES[c]] for row in source])

    @torch.no_grad()
    def edited_latent(self, target: Optional[FaceParams] = None) -> Tuple[torch.Tensor, Tuple[str, ...]]:
        """``(w_hat, applied)``: each rig whose component changed, applied in :data:`RIG_COMPONENTS` order.

        Unchanged components are skipped rather than passed through their rig: RigNet only
        approximately reproduces w for the source parameters (its L_rec), and skipping keeps the
        untouched face exactly the generator's.

        The latent does not change while the sliders move, so rigs with ``bind`` (RigNets, see
        :meth:`~stylerig_lite.rignet.RigNet.bind`) are bound to it once, chained with the bound
        object's ``then`` when several apply, and cached per set of applied components until the
        latent changes (:meth:`set_latent`): a frame then costs one small product per moved
        component instead of every rig's encoder and decoder. Rigs without it (plain callables)
        are called in turn, after the bound chain.
        """
        target = target or self.target_params()
        p = target.to_vector().to(self.w.device)
        components = tuple(c for c in self._changed(p) if c in self.rigs)
        if self.calibrate:
            p = self._calibrated(components, p)
        w = self._apply_rigs(components, p)
        if self.delta and components:  # ŵ = w + rigs(w, target) - rigs(w, source); see the class
            at_source = self._at_source.get(components)
            if at_source is None or at_source[0] is not self.w or at_source[1] != self.w._version:
                at_source = self._at_source[components] = (self.w, self.w._version, self._apply_rigs(
                    components, self.source.to_vector().to(self.w.device)))
            w = self.w + (w - at_source[2])
        return w, components

    def _calibrated(self, components: Tuple[str, ...], p: torch.Tensor) -> torch.Tensor:
        """``p [1, 196]`` with the request of every calibrated rig of ``components`` calibrated (see ``calibrate``)."""
        for component in components:
            module = getattr(self.rigs[component], "module", None)
            if getattr(module, "request_gain", None) is not None:
                p = module.calibrated(p, self.source.to_vector().to(p))
        return p

    def _apply_rigs(self, components: Tuple[str, ...], p: torch.Tensor) -> torch.Tensor:
        """The rigs of ``components`` applied in turn to the latent for the target vector ``p [1, 196]``."""
        w = self.w
        bound, count = self._bound_rigs(components, w)
        if count:
            w = bound(p)
            assert_shape(w, list(self.w.shape), f"output of the {' + '.join(components[:count])} rig(s)")
        for component in components[count:]:
            w_hat = self.rigs[component](w, p)
            assert_shape(w_hat, list(w.shape), f"output of the {component} rig")
            w = w_hat
        return w

    def _bound_rigs(self, components: Tuple[str, ...], w: torch.Tensor) -> Tuple[Optional[Callable], int]:
        """``(bound, count)``: the first ``count`` rigs of ``components`` bound to ``w`` and chained (cached)."""
        if not components:
            return None, 0
        rigs = tuple(self.rigs[c] for c in components)
        cached = self._bound.get(components)
        if (cached is not None and len(cached[0]) == len(rigs) and all(map(operator.is_, cached[0], rigs))
                and cached[1] is w and cached[2] == w._version):
            return cached[3], cached[4]
        bound, count = None, 0
        bind = getattr(rigs[0], "bind", None)
        if bind is not None:
            bound, count = bind(w), 1
            for rig in rigs[1:]:
                then = getattr(bound, "then", None)
                if then is None:
                    break
                try:
                    bound = then(getattr(rig, "module", rig))  # a ModuleRig chains its module
                except TypeError:  # not a rig it can chain: the rest are called in turn
                    break
                count += 1
        self._bound[components] = (rigs, w, w._version, bound, count)
        return bound, count

    @torch.no_grad()
    def compute_frame(self, *, estimate: Optional[bool] = None) -> Frame:
        """Render the current target: RigNet(s), generator, 3DMM preview (and F on the result)."""
        times: Dict[str, float] = {}
        with self._lock:
            target, version = self.target_params(), self.version
        start = time.perf_counter()
        w_hat, applied = self.edited_latent(target)
        times["rig_ms"] = (time.perf_counter() - start) * 1e3
        t = time.perf_counter()
        image = self.source_image if not applied else self._synthesize(w_hat)
        times["generator_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        render = self.preview.render(target) if self.preview is not None else None
        times["render_ms"] = (time.perf_counter() - t) * 1e3
        estimated = None
        if self.estimate_shown if estimate is None else estimate:
            t = time.perf_counter()
            estimated = self._estimate(image, w_hat)
            times["estimate_ms"] = (time.perf_counter() - t) * 1e3
        times["total_ms"] = (time.perf_counter() - start) * 1e3
        return Frame(image[0].detach().cpu(), render, target, w_hat, applied, estimated, times, version)

    def current_image(self) -> torch.Tensor:
        """The GAN image of the current target, ``[3, R, R]`` in [0, 1]."""
        return ((self.compute_frame(estimate=False).image + 1) / 2).clamp(0, 1)

    def save_png(self, path: Union[str, Path], frame: Optional[Frame] = None, *, size: int = 256,
                 with_render: bool = False) -> Path:
        """Write the GAN image (optionally beside the 3DMM rendering) of ``frame`` (default: now) as PNG."""
        frame = frame or self.compute_frame(estimate=False)
        image = ((frame.image + 1) / 2).clamp(0, 1)
        panels = [image]
        if with_render and frame.render is not None:
            panels.append(frame.render)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_png(panels, size))
        return path


# ---------------------------------------------------------------------------------------------- PNG
def frame_pngs(frame: "Frame") -> Tuple[bytes, Optional[bytes]]:
    """``(GAN image PNG, 3DMM rendering PNG or None)`` of a frame, as :class:`EditorApp` shows it."""
    image = image_png(frame.image, value_range=(-1.0, 1.0))
    return image, (image_png(frame.render) if frame.render is not None else None)


#: Browsers scale the editor's small images up to the widget size; keep their pixels square and sharp.
PIXELATED_STYLE = ("<style>.srl-gan-image, .srl-render-image "
                   "{ image-rendering: crisp-edges; image-rendering: pixelated; }</style>")


# --------------------------------------------------------------------------------------------- app
class EditorApp:
    """The ipywidgets editor: GAN image and 3DMM rendering side by side, sliders, transfer, reset, save.

    ``EditorApp(G, rigs, F, face_model)`` or :meth:`default` (the embedded networks). Display it
    as the last expression of a cell (or ``display(app)``); ``app.widget`` is the root widget and
    ``app.state`` the :class:`EditorState`. Slider events only record values; frames are
    rendered by a :class:`LatestOnly` worker, so dragging never queues stale frames.
    ``show_estimate=True`` (default) runs F on every shown image and prints its yaw, pitch and
    roll under the image: what the edit achieved, not what was asked for.
    """

    def __init__(self, generator, rigs: Mapping[str, Rig], estimator, face_model: Optional[FaceModel] = None, *,
                 seed: int = 0, truncation_psi: float = 0.7, preview_size: int = 40, display_size: int = 256,
                 show_estimate: bool = True, background: bool = True, save_dir: Union[str, Path] = "edits",
                 image_size: Optional[int] = None, delta: bool = False, calibrate: bool = True):
        import ipywidgets as W

        self.state = EditorState(generator, rigs, estimator, face_model, seed=seed, truncation_psi=truncation_psi,
                                 preview_size=preview_size, estimate_shown=show_estimate, image_size=image_size,
                                 delta=delta, calibrate=calibrate)
        self.display_size = int(display_size)
        self.save_dir = Path(save_dir)
        self.last_frame: Optional[Frame] = None
        self._syncing = False
        self._scheduler: LatestOnly[Frame] = LatestOnly(self.state.compute_frame, self._show_frame,
                                                        background=background, on_error=self._show_error)

        self.image = W.Image(format="png", width=self.display_size, height=self.display_size)
        self.image.add_class("srl-gan-image")
        self.render_image = W.Image(format="png", width=self.display_size, height=self.display_size)
        self.render_image.add_class("srl-render-image")
        self.estimate_label = W.HTML("")
        self.estimate_label.add_class("srl-estimate")
        self.message = W.HTML("")
        self.message.add_class("srl-message")
        self.status = W.HTML("")
        self.status.add_class("srl-status")

        layout = W.Layout(width="360px")
        style = {"description_width": "110px"}
        self.sliders: Dict[str, Any] = {}
        for name, spec in SLIDERS.items():
            slider = W.FloatSlider(min=spec.low, max=spec.high, step=spec.step, description=spec.label,
                                   continuous_update=True, readout_format=".2f" if spec.step < 1 else ".0f",
                                   layout=layout, style=style)
            slider.add_class(f"srl-slider-{name}")
            if spec.component not in self.state.rigs:
                slider.description_tooltip = f"no {spec.component} rig: only the 3DMM rendering follows"
            slider.observe(lambda change, name=name: self._on_slider(name, change["new"]), names="value")
            self.sliders[name] = slider
        self.expression_name = W.Dropdown(options=list(EXPRESSION_NAMES), value="jawOpen", description="any of 53",
                                          layout=layout, style=style)
        self.expression_slider = W.FloatSlider(min=0.0, max=1.0, step=0.05, description="weight",
                                               continuous_update=True, layout=layout, style=style)
        self.expression_slider.add_class("srl-slider-expression")
        self.expression_name.observe(lambda change: self._sync_sliders(), names="value")
        self.expression_slider.observe(
            lambda change: self._on_slider(self.expression_name.value, change["new"]), names="value")

        self.seed = W.BoundedIntText(value=int(seed), min=0, max=2**31 - 1, description="seed",
                                     layout=W.Layout(width="200px"))
        self.seed.add_class("srl-seed")
        self.seed.observe(lambda change: self._on_seed(change["new"]), names="value")
        random_button = W.Button(description="random face", icon="random")
        random_button.on_click(lambda _: setattr(self.seed, "value", int(np.random.randint(0, 2**31 - 1))))
        self.transfer_component = W.Dropdown(options=list(RIG_COMPONENTS), value="pose", description="transfer",
                                             layout=W.Layout(width="230px"))
        self.transfer_seed = W.BoundedIntText(value=int(seed) + 1, min=0, max=2**31 - 1, description="from seed",
                                              layout=W.Layout(width="200px"))
        transfer_button = W.Button(description="transfer", icon="exchange")
        transfer_button.on_click(lambda _: self._on_transfer())
        reset_button = W.Button(description="reset", icon="undo")
        reset_button.add_class("srl-reset")
        reset_button.on_click(lambda _: self._on_reset())
        save_button = W.Button(description="save PNG", icon="save")
        save_button.on_click(lambda _: self._on_save())

        def box(title: str, names: Sequence[str], extra: Sequence[Any] = ()) -> Any:
            return W.VBox([W.HTML(f"<b>{title}</b>"), *[self.sliders[n] for n in names], *extra])

        images = W.HBox([
            W.VBox([W.HTML("<b>StyleGAN image</b>"), self.image, self.estimate_label]),
            W.VBox([W.HTML("<b>3DMM target</b>"), self.render_image]),
        ])
        controls = W.HBox([
            box("pose", ["yaw", "pitch", "roll"]),
            box("expression", ["jawOpen", "smile", "blink", "browRaise"], [self.expression_name, self.expression_slider]),
            box("light", list(LIGHT_SLIDERS)),
        ])
        face_row = W.HBox([self.seed, random_button, self.transfer_component, self.transfer_seed, transfer_button,
                           reset_button, save_button])
        self.widget = W.VBox([W.HTML(PIXELATED_STYLE), images, face_row, controls, self.message, self.status])
        self._sync_sliders()
        self.request_frame()

    # -- construction from the embedded networks ------------------------------------------------
    @classmethod
    def default(cls, generator: str = "faceworld", **kwargs: Any) -> "EditorApp":
        """The editor on embedded networks (``stylerig_lite.pretrained``).

        ``generator='faceworld'``: the FaceWorld StyleGAN2, its image F and RigNets; ``'ffhq'``: the photoreal
        MobileStyleGAN at 256 px, its latent F and RigNets.
        """
        import warnings

        from . import pretrained
        from .morphable import load_face_model

        loader = getattr(pretrained, "rignet", None)
        if loader is None:
            raise RuntimeError("this version of stylerig_lite.pretrained has no rignet() loader: the embedded "
                               "RigNets are not available yet; build EditorApp(G, rigs, F, face_model) yourself")
        if generator not in pretrained.GENERATOR_NAMES:
            raise KeyError(f"unknown generator {generator!r}; expected one of {list(pretrained.GENERATOR_NAMES)}")
        rigs = {}
        for component in (RIG_COMPONENTS if generator == "faceworld" else pretrained.PHOTOREAL_RIGS):
            try:
                rigs[component] = loader(component, generator=generator)
            except (pretrained.WeightsError, KeyError, FileNotFoundError) as error:  # one missing: edit the others
                warnings.warn(f"no embedded {component} RigNet ({error}); its sliders move only the 3DMM rendering")
        if not rigs:
            raise pretrained.WeightsError("no embedded RigNet is available (see the warnings above)")
        if generator == "ffhq":
            kwargs.setdefault("image_size", 256)
            return cls(pretrained.photoreal_generator(), rigs, pretrained.latent_f("ffhq"),
                       load_face_model(progress=False), **kwargs)
        return cls(pretrained.generator(), rigs, pretrained.face_estimator(), load_face_model(progress=False), **kwargs)

    # -- events ---------------------------------------------------------------------------------
    def _on_slider(self, name: str, value: float) -> None:
        if self._syncing:
            return
        # The browser snaps a synced value to the slider's step grid and sends it back; that echo
        # (less than half a step away) is not an edit and must not switch a rig on.
        if abs(float(value) - self.state.slider_value(name)) <= slider_spec(name).step / 2 + 1e-9:
            return
        self.state.set_slider(name, value)
        self.message.value = self.state.message
        self.request_frame()

    def _on_seed(self, seed: int) -> None:
        self.status.value = f"loading seed {seed} ..."
        self.state.set_seed(int(seed))
        self._sync_sliders()
        self.request_frame()

    def _on_reset(self) -> None:
        self.state.reset()
        self._sync_sliders()
        self.message.value = "reset to the generated face"
        self.request_frame()

    def _on_transfer(self) -> None:
        try:
            self.state.transfer(self.transfer_component.value, int(self.transfer_seed.value))
        except Exception as error:  # noqa: BLE001 - report in the app, keep it alive
            self._show_error(error)
            return
        self._sync_sliders()
        self.message.value = self.state.message
        self.request_frame()

    def _on_save(self) -> None:
        frame = self.last_frame
        seed = self.state.seed if self.state.seed is not None else "latent"
        path = self.save_dir / f"stylerig_seed{seed}_v{frame.version if frame else 0}.png"
        self.state.save_png(path, frame, size=self.display_size, with_render=True)
        self.message.value = f"saved {path}"

    def _sync_sliders(self) -> None:
        """Move the widgets to the state's values without triggering edits."""
        self._syncing = True
        try:
            for name, slider in self.sliders.items():
                slider.value = self.state.slider_value(name)
            self.expression_slider.value = self.state.slider_value(self.expression_name.value)
        finally:
            self._syncing = False

    # -- frames ---------------------------------------------------------------------------------
    def request_frame(self) -> None:
        self._scheduler.request()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the latest requested frame is shown (for scripts and tests)."""
        return self._scheduler.wait(timeout)

    def _show_frame(self, frame: Frame) -> None:
        self.last_frame = frame
        start = time.perf_counter()
        image, render = frame_pngs(frame)  # native resolution; the browser scales to display_size
        frame.timings_ms["display_ms"] = (time.perf_counter() - start) * 1e3
        self.image.value = image
        if render is not None:
            self.render_image.value = render
        if frame.estimate is not None:
            yaw, pitch, roll = frame.estimate.angles_deg[0].tolist()
            self.estimate_label.value = (f"F(shown image): yaw <span class='srl-yaw'>{yaw:.1f}</span>°, "
                                         f"pitch {pitch:.1f}°, roll {roll:.1f}°")
        t = frame.timings_ms
        rigs = ", ".join(frame.applied) or "none"
        self.status.value = (f"<small>frame {frame.version}: {t['total_ms']:.0f} ms (rigs [{rigs}] "
                             f"{t['rig_ms']:.1f}, G {t['generator_ms']:.1f}, 3DMM {t['render_ms']:.1f}"
                             + (f", F {t['estimate_ms']:.1f}" if "estimate_ms" in t else "")
                             + f", PNG {t['display_ms']:.1f} ms)</small>")

    def _show_error(self, error: BaseException) -> None:
        self.message.value = f"<span style='color:#b00'>error: {type(error).__name__}: {error}</span>"

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


# ------------------------------------------------------------------------------- the static book
def edit_frames(state: EditorState, slider: str, values: Sequence[float]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Precompute a slider sweep: ``(images [N, 3, R, R] in [0, 1], renders [N, 3, h, h] or None)``.

    The state's target is restored afterwards, so a sweep does not disturb the editor.
    """
    images, renders = [], []
    saved = state.target_params()
    saved_light, saved_message = dict(state.light_controls), state.message
    try:
        for value in values:
            state.set_slider(slider, value)
            frame = state.compute_frame(estimate=False)
            images.append(((frame.image + 1) / 2).clamp(0, 1))
            if frame.render is not None:
                renders.append(frame.render)
    finally:
        with state._lock:
            state.target, state.light_controls, state.message = saved, saved_light, saved_message
            state.version += 1
    return torch.stack(images), (torch.stack(renders) if renders else None)


def edit_animation(state: EditorState, slider: str, values: Sequence[float], *, interval_ms: int = 120,
                   scale: float = 2.2, title: Optional[str] = None):
    """A matplotlib ``FuncAnimation`` of a slider sweep: GAN image and 3DMM target side by side."""
    import matplotlib.pyplot as plt
    from matplotlib import animation

    values = [float(v) for v in values]
    images, renders = edit_frames(state, slider, values)
    spec = slider_spec(slider)
    columns = 2 if renders is not None else 1
    fig, axes = plt.subplots(1, columns, figsize=(scale * columns, scale + 0.3), squeeze=False)
    panels = [axes[0, 0].imshow(images[0].permute(1, 2, 0).numpy(), interpolation="nearest")]
    axes[0, 0].set_title("StyleGAN", fontsize=9)
    if renders is not None:
        panels.append(axes[0, 1].imshow(renders[0].permute(1, 2, 0).numpy(), interpolation="nearest"))
        axes[0, 1].set_title("3DMM target", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    caption = fig.suptitle("", fontsize=9)

    def draw(i: int):
        panels[0].set_data(images[i].permute(1, 2, 0).numpy())
        if renders is not None:
            panels[1].set_data(renders[i].permute(1, 2, 0).numpy())
        caption.set_text(f"{title + ': ' if title else ''}{spec.label} = {values[i]:.3g}{spec.unit}")
        return [*panels, caption]

    draw(0)
    fig.tight_layout()
    anim = animation.FuncAnimation(fig, draw, frames=len(values), interval=interval_ms, blit=False)
    plt.close(fig)  # the animation holds the figure; do not also show it as a still
    return anim


def animation_html(state: EditorState, slider: str, values: Sequence[float], **kwargs: Any) -> str:
    """Self-contained HTML (``to_jshtml``: frames as embedded PNGs plus play/step controls) of a sweep.

    Works in the static book: ``IPython.display.HTML(animation_html(state, "yaw", range(-30, 31, 5)))``.
    Back-and-forth looping makes a sweep read like a slider being dragged.
    """
    return edit_animation(state, slider, values, **kwargs).to_jshtml(default_mode="reflect")


__all__ = [
    "RIG_COMPONENTS", "SLIDERS", "EXPRESSION_GROUPS", "PREVIEW_PARTS", "SliderSpec", "Frame",
    "EditorState", "EditorApp", "LatestOnly", "ModuleRig", "PreviewRenderer",
    "as_rig", "slider_spec", "check_expression_name", "clamp_to_spec", "light_direction", "light_to_gamma", "gamma_to_light",
    "to_png", "image_png", "frame_pngs", "edit_frames", "edit_animation", "animation_html",
]
