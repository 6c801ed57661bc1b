"""Edit a real photograph: align, embed into W+, rig, paste back (chapter 7,
``notebooks/07_editing_a_photograph.ipynb``).

The RigNets edit *latents*; a photograph has none. PIE (Tewari et al., SIGGRAPH Asia 2020)
adds the missing step: embed the portrait into the generator's W+ space, then rig the code.
This module does that on the photoreal generator, in four parts:

1. :func:`load_photo` reads and checks the file (not an image, grayscale, alpha, huge);
2. :func:`align_face` finds the face with dlib's HOG detector and 68 landmarks and crops it
   the way FFHQ was cropped (:func:`ffhq_quad`: a square oriented by the eyes and the mouth),
   keeping the affine map from crop pixels to photo pixels, so that an edit can be pasted
   back (:func:`paste_back`, a feathered ellipse);
3. :func:`embed` finds a W+ code whose image matches the crop: the photo encoder's guess
   (:mod:`stylerig_lite.encoder`), then Adam through the differentiable generator on a pixel
   term, a feature term (the encoder's own stages), a landmark term (the latent F's projected
   landmarks against dlib's, so that F reads the photo's pose and expression, which is what
   the RigNets start from) and PIE's editability prior in a simple form: the W+ rows are pulled
   toward their mean, since every code the RigNets were trained on has equal rows;
4. :func:`edit_photo` applies the photoreal RigNets to that code through
   :class:`~stylerig_lite.editing.EditorState` (as a difference, and with yaw and pitch turns
   checked in the drawn frame by :func:`turn_loop`; chapter 7, section 5 measures why), and
   measures what the issue asks for:
   PSNR of the embedding, identity distance (dlib's descriptor), landmark NME, and the yaw
   change the independent judge reads.

Chapter 7, section 5 measures the reconstruction/editability trade-off (the prior's weight against PSNR
and the judged yaw change). Everything here runs on the CPU; a generator pass with its
backward costs about 1 s at 256 px on two cores, so the step count is the price of a photo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as nnf

from .camera import affine_points, affine_points_inverse
from .checks import assert_finite, assert_shape

__all__ = [
    "PhotoError",
    "AlignedFace",
    "EmbedConfig",
    "EmbedResult",
    "load_photo",
    "detect_faces",
    "ffhq_quad",
    "align_face",
    "crop_to_photo",
    "paste_back",
    "embed",
    "edit_embedding",
    "head_pose",
    "turn_loop",
    "edit_photo",
    "example_photo",
    "upload_editor",
    "psnr_db",
]

#: Photos above this many pixels are refused (a decompression bomb, or a scan that needs cropping).
MAX_PIXELS = 60_000_000
#: Longer sides are area-averaged down to this before detection (a face needs far fewer pixels).
MAX_SIDE = 2048
#: Eye centres closer than this (in photo pixels) are refused: the crop would be mostly upsampling.
MIN_EYE_DISTANCE_PX = 24.0
#: The side of the aligned crop the generator is compared with (its 256-px path).
CROP_SIZE = 256
EXAMPLES = ("astronaut", "grace_hopper")


class PhotoError(ValueError):
    """A photograph that cannot be edited, with the reason and what to do instead."""


# ----------------------------------------------------------------------------------------------
# 1. Reading.


def example_photo(name: str = "astronaut") -> np.ndarray:
    """A bundled portrait ``[H, W, 3]`` uint8, from a package the book installs anyway.

    ``'astronaut'``: scikit-image's ``data.astronaut()`` (Eileen Collins, a public-domain NASA photograph,
    512 px), the evaluation photo of chapter 7. ``'grace_hopper'``: Matplotlib's sample
    ``grace_hopper.jpg`` (Grace Hopper, a public-domain U.S. Navy photograph, 512 x 600 px), the one real
    photograph among the validation faces that chose how photos are edited (chapter 7, section 5).
    """
    if name not in EXAMPLES:
        raise KeyError(f"unknown example photo {name!r}; expected one of {list(EXAMPLES)}")
    if name == "grace_hopper":
        import matplotlib
        from PIL import Image

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if not path.is_file():
            raise PhotoError(f"Matplotlib {matplotlib.__version__} has no {path.name} at {path.parent}; "
                             "reinstall it (`pip install --force-reinstall matplotlib`)")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    try:
        from skimage import data
    except ImportError as error:
        raise PhotoError(f"the example photos come from scikit-image: `pip install scikit-image` ({error})") from None
    return np.asarray(data.astronaut())


def load_photo(source: Any) -> Tuple[torch.Tensor, List[str]]:
    """``(photo [3, H, W] float32 in [0, 1], notes)`` from a path, PIL image, array or tensor.

    Arrays: ``[H, W]`` (grayscale), ``[H, W, 3|4]`` uint8 or float in [0, 1]; tensors ``[3, H, W]`` in
    [0, 1]. Grayscale is repeated into three channels and an alpha channel dropped, each with a note;
    a photo over :data:`MAX_PIXELS` is refused; one with a side over :data:`MAX_SIDE` is shrunk (noted).
    """
    notes: List[str] = []
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no photo at {path}: pass the path of a JPEG or PNG file, or --example astronaut")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise PhotoError(f"{path} is {im.width}x{im.height} px ({im.width * im.height / 1e6:.0f} MP), over "
                                     f"the {MAX_PIXELS / 1e6:.0f} MP limit: crop or shrink it around the face first")
                source = _pil_array(im, notes)
        except UnidentifiedImageError:
            raise PhotoError(f"{path} is not an image Pillow can read (expected JPEG, PNG, WebP, ...)") from None
        except (OSError, Image.DecompressionBombError) as error:
            raise PhotoError(f"{path} could not be decoded ({error}); is the file complete?") from None
    elif type(source).__module__.startswith("PIL."):
        source = _pil_array(source, notes)
    if isinstance(source, torch.Tensor):
        if source.ndim != 3 or source.shape[0] not in (1, 3):
            raise PhotoError(f"a photo tensor must be [3, H, W] in [0, 1], got shape {tuple(source.shape)}")
        source = source.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(source)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        notes.append("the photo is grayscale: its gray was copied into R, G and B; the generator will colour it")
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise PhotoError(f"a photo must be [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}")
    if array.shape[-1] == 4:
        notes.append("the photo's alpha channel was dropped")
        array = array[..., :3]
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise PhotoError(f"the photo has {array.shape[0] * array.shape[1] / 1e6:.0f} MP, over the "
                         f"{MAX_PIXELS / 1e6:.0f} MP limit: crop or shrink it around the face first")
    if array.dtype == np.uint8:
        photo = torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255.0  # a copy: PIL's are read-only
    elif np.issubdtype(array.dtype, np.floating):
        photo = torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1)
        assert_finite(photo, "photo")
        if float(photo.min()) < -1e-3 or float(photo.max()) > 1 + 1e-3:
            raise PhotoError(f"a float photo must be in [0, 1], found [{float(photo.min()):.3g}, "
                             f"{float(photo.max()):.3g}]; divide uint8 values by 255")
    else:
        raise PhotoError(f"a photo array must be uint8 or float in [0, 1], got {array.dtype}")
    if min(photo.shape[-2:]) < 32:
        raise PhotoError(f"the photo is {photo.shape[-1]}x{photo.shape[-2]} px: too small to hold a face worth "
                         "editing (a face needs its eyes at least 24 px apart)")
    side = max(photo.shape[-2:])
    if side > MAX_SIDE:
        scale = MAX_SIDE / side
        size = (max(1, round(photo.shape[-2] * scale)), max(1, round(photo.shape[-1] * scale)))
        photo = nnf.interpolate(photo[None], size=size, mode="area")[0]
        notes.append(f"the photo was shrunk from {side} to {MAX_SIDE} px on its longer side")
    return photo.clamp(0, 1).contiguous(), notes


def _pil_array(im: Any, notes: List[str]) -> np.ndarray:
    if im.mode in ("L", "LA", "I", "I;16", "F", "1"):
        notes.append("the photo is grayscale: its gray was copied into R, G and B; the generator will colour it")
        return np.asarray(im.convert("L"))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        notes.append("the photo's alpha channel was dropped")
    return np.asarray(im.convert("RGB"))


def _to_uint8(photo: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((photo.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# 2. Alignment.


def detect_faces(photo: torch.Tensor) -> List[Tuple[float, torch.Tensor]]:
    """Every face dlib's HOG detector finds in ``photo [3, H, W]`` in [0, 1]: ``[(box area px², points [68, 2])]``,
    largest first; points in photo pixels (centres at half-integers, as :mod:`stylerig_lite.landmarks`).

    Photos with a shorter side under 512 px are searched once more upsampled 2x when nothing is found.
    """
    from .landmarks import require_dlib, shared_detector

    require_dlib("photo alignment")
    return shared_detector().faces(_to_uint8(photo))


def ffhq_quad(points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FFHQ's crop of a face with 68 iBUG landmarks ``[68, 2]``: ``(centre c, half-axis x, half-axis y)`` in pixels.

    The crop is the square with corners ``c - x - y`` (top left), ``c + x - y``, ``c + x + y``,
    ``c - x + y``. As in the FFHQ data set's recipe (Karras et al. 2019): with ``e`` the vector
    between the eye centres and ``m`` the one from their midpoint to the mouth-corner midpoint,
    the x axis is ``e`` turned toward ``m``'s perpendicular, its length ``max(2 |e|, 1.8 |m|)``;
    the centre is the eye midpoint moved ``0.1 m`` toward the mouth.
    """
    assert_shape(points, [68, 2], "landmarks (68 iBUG points)")
    p = points.double()
    eye_left, eye_right = p[36:42].mean(0), p[42:48].mean(0)
    eye_mid = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_mid = (p[48] + p[54]) / 2
    eye_to_mouth = mouth_mid - eye_mid
    x = eye_to_eye - torch.stack([-eye_to_mouth[1], eye_to_mouth[0]])  # e minus m turned by +90°
    x = x / x.norm() * max(2.0 * float(eye_to_eye.norm()), 1.8 * float(eye_to_mouth.norm()))
    y = torch.stack([-x[1], x[0]])  # x turned by +90° (image v points down)
    c = eye_mid + 0.1 * eye_to_mouth
    return c.float(), x.float(), y.float()


@dataclasses.dataclass
class AlignedFace:
    """An FFHQ-aligned crop of a photo and the map back into it."""

    crop: torch.Tensor  # [1, 3, S, S] in [-1, 1]
    transform: torch.Tensor  # [2, 3]: photo (u, v) = transform @ (u_crop, v_crop, 1), pixels
    landmarks: torch.Tensor  # [68, 2] dlib's points in crop pixels
    photo_landmarks: torch.Tensor  # [68, 2] the same in photo pixels
    faces_found: int
    photo_size: Tuple[int, int]  # (H, W)
    notes: List[str]


def crop_to_photo(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Crop pixels ``[..., 2]`` -> photo pixels with an :class:`AlignedFace` ``transform``."""
    return affine_points(points, transform)


def photo_to_crop(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Photo pixels ``[..., 2]`` -> crop pixels (the inverse of :func:`crop_to_photo`)."""
    return affine_points_inverse(points, transform)


def _warp(image: torch.Tensor, transform: torch.Tensor, out_size: Tuple[int, int],
          padding: str = "reflection") -> torch.Tensor:
    """Sample ``image [B, C, H, W]`` at ``transform @ (u, v, 1)`` of each output pixel centre (bilinear)."""
    height, width = image.shape[-2:]
    v, u = torch.meshgrid(torch.arange(out_size[0]) + 0.5, torch.arange(out_size[1]) + 0.5, indexing="ij")
    source = crop_to_photo(torch.stack([u, v], -1).float(), transform)  # [h, w, 2] image pixels
    grid = torch.stack([source[..., 0] / width * 2 - 1, source[..., 1] / height * 2 - 1], -1)
    grid = grid[None].expand(image.shape[0], -1, -1, -1)
    return nnf.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def align_face(photo: torch.Tensor, size: int = CROP_SIZE, *, notes: Optional[List[str]] = None) -> AlignedFace:
    """The FFHQ-aligned ``size``-px crop of the largest face in ``photo [3, H, W]`` in [0, 1].

    Several faces: the largest is taken and a note says so. No face, or eyes closer than
    :data:`MIN_EYE_DISTANCE_PX`: a :class:`PhotoError`. A crop much larger than ``size`` is taken
    from an area-averaged copy of the photo (no aliasing); parts of the square outside the photo
    are filled by reflection (noted when more than 5% of its side sticks out).
    """
    assert_shape(photo, [3, None, None], "photo [3, H, W]")
    notes = list(notes or [])
    faces = detect_faces(photo)
    if not faces:
        raise PhotoError("no face found in the photo (dlib's frontal-face detector): use a photo where one face "
                         "looks roughly at the camera, eyes visible, at least ~80 px wide")
    if len(faces) > 1:
        notes.append(f"{len(faces)} faces found; editing the largest")
    points = faces[0][1]
    eye_distance = float((points[42:48].mean(0) - points[36:42].mean(0)).norm())
    if eye_distance < MIN_EYE_DISTANCE_PX:
        raise PhotoError(f"the face is too small: its eyes are {eye_distance:.0f} px apart, fewer than "
                         f"{MIN_EYE_DISTANCE_PX:.0f}; use a larger photo or one taken closer")
    c, x, y = ffhq_quad(points)
    side = 2 * float(x.norm())  # the crop's side in photo pixels
    transform = torch.stack([2 * x / size, 2 * y / size, c - x - y], 1)  # [2, 3]
    height, width = photo.shape[-2:]
    corners = crop_to_photo(torch.tensor([[0.0, 0], [size, 0], [size, size], [0, size]]), transform)
    outside = float(torch.cat([-corners.min(0).values, corners.max(0).values - torch.tensor([width, height])]).max())
    if outside > 0.05 * side:
        notes.append(f"the crop reaches {outside:.0f} px past the photo's edge; that part is mirrored")
    source, scale = photo[None], 1.0
    if side > 2 * size:  # shrink first: bilinear sampling alone would alias
        scale = 1.5 * size / side
        source = nnf.interpolate(source, scale_factor=scale, mode="area", recompute_scale_factor=False)
        scale = source.shape[-1] / width
    sampling = torch.cat([transform[:, :2] * scale, transform[:, 2:] * scale], 1)
    crop = _warp(source, sampling, (size, size)).clamp(0, 1) * 2 - 1
    return AlignedFace(crop, transform, photo_to_crop(points, transform), points, len(faces),
                       (int(height), int(width)), notes)


def face_mask(size: int = CROP_SIZE, *, feather: float = 0.08) -> torch.Tensor:
    """``[1, 1, S, S]`` soft ellipse over the face of an FFHQ crop (1 inside, 0 outside, a ``feather``-wide ramp)."""
    v, u = torch.meshgrid((torch.arange(size) + 0.5) / size, (torch.arange(size) + 0.5) / size, indexing="ij")
    r = torch.sqrt(((u - 0.5) / 0.34) ** 2 + ((v - 0.54) / 0.44) ** 2)  # FFHQ: the face fills ~2/3 of the width
    return ((1 - r) / feather + 0.5).clamp(0, 1)[None, None]


def paste_back(photo: torch.Tensor, crop: torch.Tensor, aligned: AlignedFace) -> torch.Tensor:
    """``photo [3, H, W]`` in [0, 1] with ``crop [1, 3, S, S]`` (in [-1, 1]) blended in over the face (:func:`face_mask`)."""
    assert_shape(crop, [1, 3, None, None], "crop")
    size = crop.shape[-1]
    to_crop = torch.linalg.inv(torch.cat([aligned.transform, torch.tensor([[0.0, 0, 1]])]).double()).float()[:2]
    to_crop = to_crop * (size / CROP_SIZE)  # photo pixels -> pixels of this crop
    height, width = photo.shape[-2:]
    layers = torch.cat([(crop + 1) / 2, face_mask(size)], 1)  # [1, 4, S, S]
    warped = _warp(layers, to_crop, (height, width), padding="zeros")[0]
    alpha = warped[3:4]
    return (photo * (1 - alpha) + warped[:3].clamp(0, 1) * alpha).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# 3. Embedding.


@dataclasses.dataclass
class EmbedConfig:
    """The embedding's optimisation (chapter 7, section 5).

    ``w_prior``, ``lr``, ``lr_final`` and ``steps`` were chosen on three validation faces of the photoreal
    corpus (``training/photo_embedding.py``; shipped as ``data/photo_embedding.json``): with priors 0, 0.1 and 1
    the median PSNR after 60 steps was 25.0, 25.1 and 24.8 dB, and the judged yaw change of a +15°
    edit 7.9°, 8.3° and 8.8°; the rule "the largest yaw change within 0.5 dB of the best PSNR" picked 1.
    With that prior, learning rates 0.05, 0.1 and 0.2 gave 24.8, 25.4 and 26.8 dB (identity distances
    0.32, 0.30, 0.30; yaw changes 8.8°, 9.8°, 9.8°). At 0.2 the PSNR curves oscillated, so the rates
    were run again with a cosine decay to a tenth (and 0.4, which diverged on two faces): 23.5, 24.4 and
    27.9 dB, and the same rule picked 0.2 with the decay.
    At the first setting (0.05, constant) the median PSNR rose from 12.1 dB (the encoder's guess) to 22.9
    at 30 steps, 23.6 at 40 and 24.8 at 60. The step count is what fits the minute a photo may take on
    two cores: 40 steps at first (1.1 s a step at 256 px), 60 since the generator's backward stopped
    copying its gradients through in-place views (0.65 s a step; ``mobilestylegan.networks``), and 70
    since its styled 1x1 convolutions got their own backward (a forward and backward pass 0.85 times as
    long as before, measured side by side in ``bench photoreal``: 70 steps take the time 60 took). The
    other weights were set by hand (a first run on the astronaut showed each term moving), not tuned.
    """

    steps: int = 70
    lr: float = 0.2  # Adam, on the offset from the start in units of the corpus's w std
    lr_final: float = 0.1  # cosine decay of the learning rate to this fraction of lr (1 = constant)
    w_pixel: float = 1.0  # mean squared error of the [-1, 1] images
    w_feature: float = 0.5  # the encoder's stage outputs, each normalised by the target's mean square
    w_land: float = 100.0  # the latent F's landmarks vs dlib's, mean squared error in crop sides
    w_prior: float = 1.0  # W+ rows toward their mean, in corpus stds squared (editability)

    def __post_init__(self) -> None:
        if int(self.steps) < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        for name in ("lr", "lr_final", "w_pixel", "w_feature", "w_land", "w_prior"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"EmbedConfig.{name} must be a finite number >= 0, got {value}")


@dataclasses.dataclass
class EmbedResult:
    w: torch.Tensor  # [1, num_ws, w_dim] the embedded code
    image: torch.Tensor  # [1, 3, S, S] G(w) in [-1, 1]
    start: torch.Tensor  # [1, num_ws, w_dim] the encoder's guess
    history: Dict[str, List[float]]
    seconds: float


def _landmark_weights() -> torch.Tensor:
    from .train_latent_f import landmark_term_weights

    return landmark_term_weights(0.25)


def _projected_landmarks(face_model: Any, params: torch.Tensor, size: int) -> torch.Tensor:
    from .face_render import default_camera

    uv, _ = default_camera(size).project(face_model(params).landmarks)
    return uv  # [B, 68, 2] pixels


def _draw(G: Any, w: torch.Tensor, size: int) -> torch.Tensor:
    """``G``'s image of ``w`` at ``size`` px, differentiable and not clamped (the loss sees the overshoot)."""
    if size == int(getattr(G, "img_resolution", 0) or 0):
        return G.synthesis(w, noise_mode="const")
    return G.synthesis(w, noise_mode="const", resolution=size)


def embed(G: Any, crop: torch.Tensor, encoder: Any, *, latent_f: Any = None, face_model: Any = None,
          landmarks: Optional[torch.Tensor] = None, config: Optional[EmbedConfig] = None,
          progress: bool = False) -> EmbedResult:
    """A W+ code of ``G`` whose image matches ``crop [1, 3, S, S]`` (in [-1, 1], FFHQ-aligned; S = 256 for
    the photoreal generator, any size ``G.synthesis(..., resolution=S)`` draws).

    Starts from ``encoder(crop)`` and runs ``config.steps`` Adam steps on the terms of the module
    docstring. The landmark term needs ``latent_f``, ``face_model`` and ``landmarks [68, 2]`` (dlib's
    points in crop pixels); without them it is left out. Deterministic (no random draws).
    """
    config = config or EmbedConfig()
    assert_shape(crop, [1, 3, None, None], "crop (an aligned face, align_face(...).crop)")
    size = int(crop.shape[-1])
    if crop.shape[-2] != size:
        raise ValueError(f"crop must be square, got {tuple(crop.shape[-2:])}")
    assert_finite(crop, "crop")
    encoder.check_generator(G)
    use_land = latent_f is not None and face_model is not None and landmarks is not None and config.w_land > 0
    if use_land:
        latent_f.check_generator(G)
        assert_shape(landmarks, [68, 2], "landmarks (dlib's 68 points in crop pixels)")
        assert_finite(landmarks, "landmarks")
    start_time = time.perf_counter()
    small = nnf.interpolate(crop, size=(encoder.config.image_size,) * 2, mode="area")
    with torch.no_grad():
        start = encoder(small)  # [1, num_ws, w_dim]
        target_features = [f.detach() for f in encoder.features(small)] if config.w_feature > 0 else []
    scale = encoder.w_std.detach()
    delta = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.lr)
    weights = _landmark_weights() if use_land else None
    history: Dict[str, List[float]] = {k: [] for k in ("loss", "pixel", "feature", "landmark", "prior")}
    from tqdm.auto import tqdm

    for step in tqdm(range(config.steps), desc="embedding", disable=not progress):
        cosine = 0.5 * (1 + math.cos(math.pi * step / max(config.steps - 1, 1)))
        for group in opt.param_groups:
            group["lr"] = config.lr * (config.lr_final + (1 - config.lr_final) * cosine)
        w = start + delta * scale
        image = _draw(G, w, size)
        terms = {"pixel": (image - crop).square().mean()}
        if target_features:
            ours = encoder.features(nnf.interpolate(image.clamp(-1, 1), size=small.shape[-2:], mode="area"))
            terms["feature"] = sum((a - b).square().mean() / b.square().mean().clamp_min(1e-8)
                                   for a, b in zip(ours, target_features)) / len(ours)
        if use_land:
            points = _projected_landmarks(face_model, latent_f(w), size)[0]
            err = ((points - landmarks) / size).square().sum(-1)
            terms["landmark"] = (err * weights).sum() / weights.sum()
        terms["prior"] = ((w - w.mean(1, keepdim=True)) / scale).square().mean()
        loss = (config.w_pixel * terms["pixel"] + config.w_feature * terms.get("feature", 0.0)
                + config.w_land * terms.get("landmark", 0.0) + config.w_prior * terms["prior"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history["loss"].append(float(loss.detach()))
        for k in ("pixel", "feature", "landmark", "prior"):
            history[k].append(float(terms[k].detach()) if k in terms else float("nan"))
    with torch.no_grad():
        w = (start + delta * scale).detach()
        image = _draw(G, w, size).clamp(-1, 1)
    return EmbedResult(w, image, start, history, time.perf_counter() - start_time)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1] (peak = the range, 2)."""
    mse = float((a.clamp(-1, 1) - b.clamp(-1, 1)).square().mean())
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


# ----------------------------------------------------------------------------------------------
# 4. Editing and measuring.

#: Slider arguments of ``edit-photo``: yaw and pitch are turns relative to the photo (degrees); the
#: expression and light sliders set absolute values, as the editor's sliders do.
RELATIVE = ("yaw", "pitch")


@dataclasses.dataclass
class PhotoEdit:
    """What :func:`edit_photo` returns: the crops, the codes, the pasted photo and the measurements."""

    photo: torch.Tensor  # [3, H, W] in [0, 1], as read (load_photo)
    aligned: AlignedFace
    embedding: EmbedResult
    edited: torch.Tensor  # [1, 3, 256, 256] in [-1, 1]
    w_edited: torch.Tensor
    pasted: Optional[torch.Tensor]  # [3, H, W] in [0, 1]
    metrics: Dict[str, Any]
    notes: List[str]


def landmark_nme(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean distance of the paper's 66 landmarks over the inter-ocular distance of ``b`` (both ``[68, 2]``)."""
    from .landmarks import SPARSE_66

    keep = torch.as_tensor(SPARSE_66)
    ocular = float((b[42:48].mean(0) - b[36:42].mean(0)).norm())
    return float((a[keep] - b[keep]).norm(dim=-1).mean()) / ocular


def edit_photo(photo: Any, sliders: Mapping[str, float], *, config: Optional[EmbedConfig] = None,
               networks: Optional[Mapping[str, Any]] = None, paste: bool = True, measure: bool = True,
               progress: bool = False) -> PhotoEdit:
    """Align, embed and edit a photo with the photoreal generator's embedded networks.

    ``sliders``: ``{'yaw': 15, 'smile': 0.5, ...}``; yaw and pitch turn the head by that many degrees
    from the embedded photo's own pose (:data:`RELATIVE`), other sliders set the editor's absolute
    values (:data:`stylerig_lite.editing.SLIDERS`). ``networks``: ``{'G', 'encoder', 'latent_f',
    'face_model', 'rigs'}`` to use instead of the embedded ones (tests, your own training).
    ``measure``: the issue's metrics (needs dlib and, for the yaw change, MediaPipe).
    """
    from .editing import slider_spec

    start_time = time.perf_counter()
    for name, value in sliders.items():
        slider_spec(name)
        if not math.isfinite(float(value)):
            raise ValueError(f"slider {name!r} needs a finite number, got {value!r}")
    tensor, notes = load_photo(photo)
    nets = dict(networks) if networks is not None else default_networks(
        components=sorted({slider_spec(n).component for n in sliders}))
    G = nets["G"]
    aligned = align_face(tensor, notes=notes)
    embedding = embed(G, aligned.crop, nets["encoder"], latent_f=nets.get("latent_f"),
                      face_model=nets.get("face_model"), landmarks=aligned.landmarks, config=config,
                      progress=progress)
    edited, w_hat = edit_embedding(nets, embedding.w, sliders, notes=notes)
    pasted = paste_back(tensor, edited, aligned) if paste else None
    metrics: Dict[str, Any] = {"faces_found": aligned.faces_found, "embed_steps": len(embedding.history["loss"]),
                               "embed_seconds": round(embedding.seconds, 2)}
    metrics["embed_psnr_db"] = round(psnr_db(embedding.image, aligned.crop), 3)
    if measure:
        metrics.update(_measure(aligned, embedding, edited, sliders))
    metrics["seconds"] = round(time.perf_counter() - start_time, 2)
    return PhotoEdit(tensor, aligned, embedding, edited, w_hat, pasted, metrics, notes)


def edit_embedding(networks: Mapping[str, Any], w: torch.Tensor, sliders: Mapping[str, float], *,
                   notes: Optional[List[str]] = None, delta: bool = True,
                   turn_steps: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move the sliders on an embedded code: ``(edited image [1, 3, S, S] in [-1, 1], ŵ [1, L, 512])``.

    ``networks``: ``{'G', 'latent_f', 'rigs'}`` as :func:`default_networks`; ``w [1, L, 512]`` the
    embedding; ``sliders`` as :func:`edit_photo` (yaw and pitch relative to the photo's own pose).
    The editor's messages (a slider clamped to its range, say) are appended to ``notes``.
    ``delta``: apply the rigs as a difference, ``ŵ = w + rig(w, target) - rig(w, source)``
    (:class:`~stylerig_lite.editing.EditorState`'s ``delta``), which cancels the rig's reconstruction
    error on a code unlike those it was trained on; chosen on nine validation faces (chapter 7, section 5:
    median judged error over yaw and pitch turns of up to 30° and 15°, 3.8° against 5.0° for the rig
    applied once, ``delta=False``; yaw alone 3.7° against 6.0°).
    ``turn_steps``: frames the turn loop may draw (:func:`turn_loop`; default :data:`TURN_STEPS`, 0 = ask
    the rig once); it needs ``networks['face_model']`` and dlib. On the same validation faces the loop
    brought the median error to 2.3°, and was chosen by the same rule.
    """
    from .editing import EditorState, slider_spec

    missing = sorted({slider_spec(n).component for n in sliders} - set(networks["rigs"]))
    if missing:
        raise KeyError(f"no RigNet for {missing} on this generator (have {sorted(networks['rigs'])}); "
                       "drop those sliders or pass networks= with one")
    # calibrate=False: the turn loop below measures and corrects the turn itself; its defaults and the
    # readings of chapter 7 were measured with the rig's own scale.
    state = EditorState(networks["G"], networks["rigs"], networks["latent_f"], None, image_size=CROP_SIZE,
                        delta=delta, calibrate=False)
    state.set_latent(w)
    for name, value in sliders.items():
        base = state.slider_value(name) if name in RELATIVE else 0.0
        state.set_slider(name, base + float(value))
        if state.message and notes is not None:
            notes.append(state.message)
    turns = {name: float(value) for name, value in sliders.items() if name in RELATIVE and float(value) != 0}
    steps = TURN_STEPS if turn_steps is None else int(turn_steps)
    if turns and steps > 0 and networks.get("face_model") is not None:
        frame = turn_loop(state, turns, networks["face_model"], steps=steps, notes=notes)
    else:
        frame = state.compute_frame(estimate=False)
    return frame.image[None], frame.w_hat.detach()


#: Frames the turn loop may draw, and the error (degrees) at which it stops (chapter 7, section 5).
TURN_STEPS = 4
TURN_TOLERANCE_DEG = 1.0


def head_pose(image: torch.Tensor, start: Any, face_model: Any, *, iterations: int = 20) -> Optional[torch.Tensor]:
    """Yaw, pitch and roll (degrees, ``[3]``) of the face in ``image [1, 3, S, S]`` (in [-1, 1]), or None.

    dlib's 68 landmarks on the image, and the 3DMM's pose (rotation and translation) fitted to them by
    Levenberg-Marquardt in float64, with the weights of the embedding's landmark term; identity and
    expression stay those of ``start`` (a :class:`FaceParams` of batch 1, where the fit also starts).
    It converges in 3-8 iterations, 30-50 ms (L-BFGS took 0.2-0.4 s and stopped up to 0.7° short).
    A different reader than the judge's (MediaPipe's 468 points against a template, chapter 5):
    another detector, trained on other photographs, and our face model instead of a mean mesh.
    """
    from .face_render import default_camera

    found = detect_faces(((image[0] + 1) / 2).clamp(0, 1))
    if not found:
        return None
    size = int(image.shape[-1])
    camera = default_camera(size)
    points = found[0][1].double()  # [68, 2] pixels
    with torch.no_grad():  # the 68 landmarks of start's shape, unposed: only the pose is fitted
        unposed = face_model.shape(start.identity, start.expression)[0, face_model.landmark_indices].double()
    weights = _landmark_weights().double()
    sqrt_w = (weights / weights.sum()).sqrt()[:, None] / size

    def residuals(pose: torch.Tensor) -> torch.Tensor:  # [6] -> [136]
        posed = face_model.pose_vertices(unposed[None], pose[None])  # [1, 68, 3]
        uv = camera.pixels(camera.to_camera(posed)[0])  # project() without its checks (jacfwd)
        return ((uv - points) * sqrt_w).reshape(-1)

    pose = start.pose[0].detach().double().clone()
    res = residuals(pose)
    cost, damping = float(res @ res), 1e-3
    for _ in range(int(iterations)):
        jac = torch.func.jacfwd(residuals)(pose)  # [136, 6]
        normal, grad = jac.T @ jac, jac.T @ res
        while True:
            step = torch.linalg.solve(normal + damping * torch.diag(normal.diagonal().clamp_min(1e-12)), -grad)
            trial = residuals(pose + step)
            trial_cost = float(trial @ trial)
            if trial_cost < cost or damping > 1e8:
                break
            damping *= 5
        if trial_cost >= cost:
            break
        pose, res, damping = pose + step, trial, damping / 3
        done, cost = cost - trial_cost < 1e-14, trial_cost
        if done:
            break
    return torch.rad2deg(pose[:3]).float()


def turn_loop(state: Any, turns: Mapping[str, float], face_model: Any, *, steps: int = TURN_STEPS,
              tolerance_deg: float = TURN_TOLERANCE_DEG, notes: Optional[List[str]] = None,
              reader: Optional[Any] = None) -> Any:
    """Draw the edit until the head in the image has turned by ``turns`` (degrees from the embedding).

    On an embedded photo the pose RigNet turns the head by its own fraction of the request (0.58 to 1.38
    of the asked yaw on nine validation faces, 0.72 to 1.29 with this loop; chapter 7, section 5). So the
    turn is measured in the image and the request corrected: draw the frame for request ``q``, read the
    head's pose with :func:`head_pose` against
    the embedding's own, set ``q += (turn - read) / slope`` with the slope of the last two frames (1 at
    first, kept within [0.3, 2]), at most ``steps`` frames, stopping once every error is below
    ``tolerance_deg``. Requests stay inside the sliders' ranges; the frame with the smallest error is
    returned. If the pose cannot be read (no face found), the best frame so far (or the first) is
    returned and a note says so.

    ``state``: an :class:`~stylerig_lite.editing.EditorState` on the embedded code with every slider set
    (``turns`` relative to its source pose). ``reader``: ``image [1, 3, S, S] -> degrees [3] or None``
    instead of :func:`head_pose` (tests). Returns the chosen :class:`~stylerig_lite.editing.Frame`.
    """
    names = RELATIVE  # the angles a turn may ask for, in the order of the pose vector
    read_pose = reader or (lambda image: head_pose(image, state.source, face_model))
    source_deg = [math.degrees(float(x)) for x in state.source.pose[0, :2]]
    start = read_pose(state.source_image)
    asked = {name: float(turn) for name, turn in turns.items()}
    slope = {name: 1.0 for name in turns}
    best, last = None, None
    for step in range(max(int(steps), 1)):
        for name in turns:
            state.set_slider(name, source_deg[names.index(name)] + asked[name])
            if state.message and notes is not None and state.message not in notes:
                notes.append(state.message)
            asked[name] = state.slider_value(name) - source_deg[names.index(name)]  # after clamping
        frame = state.compute_frame(estimate=False)
        read = read_pose(frame.image[None]) if start is not None else None
        if read is None:
            if notes is not None:
                notes.append("the turn loop could not find the face's pose in the "
                             + ("photo's embedding" if start is None else "edited frame")
                             + ("; the rig was asked once" if best is None else "; it kept its best frame"))
            return frame if best is None else best[1]
        turned = {name: float(read[names.index(name)] - start[names.index(name)]) for name in turns}
        error = max(abs(turns[name] - turned[name]) for name in turns)
        if best is None or error < best[0]:
            best = (error, frame)
        if error < tolerance_deg or step == steps - 1:
            break
        for name in turns:
            if last is not None and abs(asked[name] - last[0][name]) > 1e-6:
                measured = (turned[name] - last[1][name]) / (asked[name] - last[0][name])
                slope[name] = min(max(measured, 0.3), 2.0)
        last = (dict(asked), turned)
        for name in turns:
            asked[name] += (turns[name] - turned[name]) / slope[name]
    return best[1]


def _measure(aligned: AlignedFace, embedding: EmbedResult, edited: torch.Tensor,
             sliders: Mapping[str, float]) -> Dict[str, Any]:
    from .identity import IdentityMeter
    from .landmarks import shared_detector

    identity = IdentityMeter()
    out: Dict[str, Any] = {}
    out["identity_distance"] = round(float(identity.distance(aligned.crop, embedding.image)[0]), 4)
    found = shared_detector().detect(embedding.image)
    out["landmark_nme"] = (round(landmark_nme(found.points[0], aligned.landmarks), 4) if bool(found.found[0])
                           else float("nan"))
    if "yaw" in sliders or "pitch" in sliders:
        from .judge import Judge

        readings = Judge().read(torch.cat([embedding.image, edited]), value_range=(-1, 1))
        for name in ("yaw", "pitch"):
            if name in sliders:
                change = float(readings[name][1] - readings[name][0])
                out[f"{name}_change_deg"] = round(change, 2) if math.isfinite(change) else float("nan")
    out["identity_distance_edit"] = round(float(identity.distance(aligned.crop, edited)[0]), 4)
    return out


def default_networks(components: Sequence[str] = ("pose", "expression", "light")) -> Dict[str, Any]:
    """The photoreal generator's embedded networks: G, encoder, latent F, face model and the RigNets of ``components``."""
    from . import pretrained
    from .morphable import load_face_model

    rigs = {}
    for component in components:
        rigs[component] = pretrained.rignet(component, generator="ffhq")
    return {"G": pretrained.photoreal_generator(), "encoder": pretrained.photo_encoder(),
            "latent_f": pretrained.latent_f("ffhq"), "face_model": load_face_model(progress=False), "rigs": rigs}


def upload_editor(components: Sequence[str] = ("pose", "expression")):
    """An ipywidgets box: upload a portrait, pick a yaw turn and a smile, see :func:`edit_photo`'s result.

    For Colab and Jupyter (chapter 7, section 6): the photo never leaves the kernel. Errors of
    :func:`load_photo` and :func:`align_face` are printed in the box, not raised.
    """
    import io as _io

    import ipywidgets as W
    import matplotlib.pyplot as plt
    from PIL import Image

    from .plotting import photo_edit_figure

    upload = W.FileUpload(accept="image/*", multiple=False, description="your photo")
    yaw = W.FloatSlider(value=15, min=-30, max=30, step=1, description="yaw turn")
    smile = W.FloatSlider(value=0.0, min=0, max=1, step=0.05, description="smile")
    out = W.Output()
    networks: Dict[str, Any] = {}

    def on_upload(change: Dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        first = files[0] if isinstance(files, (tuple, list)) else next(iter(files.values()))
        with out:
            out.clear_output()
            try:
                image, notes = load_photo(Image.open(_io.BytesIO(bytes(first["content"]))))
                networks.update(networks or default_networks(components))
                edit = edit_photo(image, {"yaw": yaw.value, "smile": smile.value}, networks=networks, measure=False)
            except (PhotoError, OSError, Image.UnidentifiedImageError) as error:
                print(f"could not edit this photo: {error}")
                return
            for note in edit.notes:
                print(f"note: {note}")
            photo_edit_figure(edit)
            plt.show()

    upload.observe(on_upload, names="value")
    return W.VBox([W.HBox([upload, yaw, smile]), out])


# ----------------------------------------------------------------------------------------------
# Command line: ``stylerig-lite edit-photo``.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", help="the photo (JPEG, PNG, ...); or --example")
    parser.add_argument("--example", choices=EXAMPLES, help="a bundled public-domain portrait instead of IMAGE")
    parser.add_argument("--out", default="edited.png", help="the edited photo (PNG; default edited.png)")
    parser.add_argument("--crop-out", help="also write the aligned crop, its embedding and the edit side by side")
    parser.add_argument("--yaw", type=float, help="turn the head by this many degrees (+: to the image's left)")
    parser.add_argument("--pitch", type=float, help="tilt the head by this many degrees")
    for name in ("smile", "jawOpen", "blink", "browRaise"):
        parser.add_argument(f"--{name}", type=float, help=f"{name} weight in [0, 1]")
    parser.add_argument("--light-azimuth", dest="light_azimuth", type=float, help="light direction, degrees")
    parser.add_argument("--steps", type=int, default=EmbedConfig.steps, help="embedding steps")
    parser.add_argument("--no-paste", action="store_true", help="write the edited crop instead of the pasted photo")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument("--threads", type=int, default=None)


def run_from_args(args: argparse.Namespace) -> int:
    from .io_utils import image_png, to_png

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.image is None) == (args.example is None):
        raise SystemExit("stylerig-lite edit-photo: give IMAGE or --example astronaut (one of them)")
    names = ("yaw", "pitch", "smile", "jawOpen", "blink", "browRaise", "light_azimuth")
    sliders = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if not sliders:
        raise SystemExit("stylerig-lite edit-photo: nothing to edit; pass e.g. --yaw 15 --smile 0.5")
    photo = example_photo(args.example) if args.example else args.image
    try:
        result = edit_photo(photo, sliders, config=EmbedConfig(steps=args.steps), paste=not args.no_paste,
                            measure=args.json, progress=not args.json)
    except (PhotoError, FileNotFoundError) as error:
        raise SystemExit(f"stylerig-lite edit-photo: {error}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if result.pasted is not None:
        out.write_bytes(image_png(result.pasted))
    else:
        out.write_bytes(to_png([(result.edited[0] + 1) / 2], CROP_SIZE))
    if args.crop_out:
        panels = [(x[0] + 1) / 2 for x in (result.aligned.crop, result.embedding.image, result.edited)]
        Path(args.crop_out).write_bytes(to_png(panels, CROP_SIZE))
    for note in result.notes:
        print(f"note: {note}", file=__import__("sys").stderr)
    if args.json:
        print(json.dumps({"out": str(out), "sliders": sliders, **result.metrics, "notes": result.notes}))
    return 0
