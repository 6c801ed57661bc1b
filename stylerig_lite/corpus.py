"""The (w, I_w) corpus: latents of the frozen StyleGAN2, their images and F's estimates.

StyleRig trains RigNet on 200k latent codes sampled from StyleGAN's mapping
network, each with its image ``I_w = G(w)`` and the face parameters
``p_w = F(I_w)`` (the paper's section 4). Sampling, synthesising and
estimating once, into files, lets RigNet training, the linear baseline and the
chapters read the same pairs instead of re-running G and F every epoch::

    stylerig-lite make-corpus --count 20000 --out corpus/      # resumable
    data = CorpusDataset("corpus/")                            # a torch Dataset
    item = data[0]   # {'w': [num_ws, w_dim], 'image': [3, H, W] in [-1, 1],
                     #  'params': [196] F's estimate, 'landmarks': [68, 2],
                     #  'detected_landmarks': [68, 2], 'landmark_confidence': float,
                     #  'face_found': bool, 'index': int}

Layout of a corpus folder (format version 2): ``manifest.json`` (count, seed,
shard size, truncation, hashes of G and F, format version, the landmark
detector, and two figures measured while making it: ``seconds_per_1000``, the
wall time per 1,000 pairs of G + F + detector + writing, and
``face_found_fraction``, the fraction of images the detector found a face in)
and ``shard_00000.npz``, ... each holding ``shard_size`` consecutive items with
the arrays ``z`` float32 ``[n, z_dim]``, ``w`` float32 ``[n, num_ws, w_dim]``
(the mapping output, so W+ corpora of edited latents fit the same format),
``images`` uint8 ``[n, H, W, 3]`` (as :class:`~stylerig_lite.datasets.FaceWorldShards`),
``params`` float32 ``[n, 196]``, ``landmarks`` float32 ``[n, 68, 2]`` (the image F's
estimate, pixels of F's input image; NaN in a corpus made without one, ``estimator_sha256``
None: the photoreal generator's, ``make-corpus --generator ffhq``, stored at 256 px), ``detected_landmarks`` float32
``[n, 68, 2]`` (dlib's 68 iBUG points detected on the stored image, pixels of
that image; NaN where no face was found: see :mod:`stylerig_lite.landmarks`),
``landmark_confidence`` float32 ``[n]`` (the detector's HOG score; NaN where no
face was found or it was found only by the upsampled fallback pass),
``face_found`` bool ``[n]`` and ``index`` int64 ``[n]``. Images without a
detected face are recorded (``face_found`` False), never dropped: item ``k`` is
always row ``k``. A version-1 corpus (without the detected landmarks) is
refused: re-make it with ``stylerig-lite make-corpus ... --overwrite``.

Reproducibility: item ``k`` of a corpus with seed ``s`` has its own latent
``z_k ~ N(0, I)`` drawn from a generator seeded by :func:`latent_seed` ``(s, k)``,
and images are synthesised with constant noise (``noise_mode='const'``), so an
item is a pure function of ``(G, F, s, k, truncation)``: an interrupted shard is
re-made identically, a larger ``--count`` extends a corpus, and ``G.synthesis(w)``
reproduces the stored image (up to its 8-bit quantisation). The detector is
deterministic and reads the stored 8-bit image, so the detected landmarks are a
function of the item too.

Under ``torchrun --nproc_per_node=N`` the shards still to make are dealt out
round-robin (shard ``i`` of the to-do list to rank ``i mod N``: no overlap, no
gaps); rank 0 checks and writes the manifest before the others start, and every
rank returns only when all shards exist. Items do not depend on who makes them,
so the folder equals the one a single process makes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as nnf

from . import distributed
from .checks import assert_finite, assert_shape, assert_value_range, positive_int
from .devices import add_device_argument, configure_cuda
from .io_utils import FolderLockedError, atomic_write_json, folder_lock, module_sha256, sha256_file  # noqa: F401  (module_sha256 re-exported)
from .landmarks import NUM_POINTS as NUM_DETECTED_POINTS
from .morphable import NUM_PARAMS
from .params import NUM_LANDMARKS
from .seeding import latent_seed, sample_z  # noqa: F401  (re-exported: the corpus's latents)

__all__ = [
    "latent_seed",  # re-exported
    "sample_z",  # re-exported
    "module_sha256",  # re-exported: a network's identity (weights + config)
    "add_arguments",
    "corpus_manifest",
    "CorpusDataset",
    "CorpusError",
    "corpus_runs",
    "DEFAULT_COUNT",
    "DEFAULT_IMAGE_SIZE",
    "NO_ESTIMATOR",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_TRUNCATION",
    "detect_stored",
    "detector_name",
    "DETECTOR_NAME",
    "device_of",
    "estimate_images",
    "FORMAT",
    "FORMAT_VERSION",
    "from_uint8",
    "make_corpus",
    "mixing_plan",
    "num_shards",
    "PathLike",
    "QUICK_COUNT",
    "quick_mode",
    "QUICK_SHARD_SIZE",
    "read_shard",
    "remove_corpus",
    "run_from_args",
    "sample_latents",
    "sample_pairs",
    "SHARD_KEYS",
    "shard_path",
    "synthesize",
    "to_uint8",
]

FORMAT = "stylerig_lite.corpus"
FORMAT_VERSION = 2  # 2: detected_landmarks, landmark_confidence, face_found (issue 21)
DEFAULT_COUNT = 20_000  # the paper used 200k; a tenth is hours, not days, on a CPU
QUICK_COUNT = 256  # STYLERIG_LITE_QUICK=1: enough to exercise every code path
DEFAULT_SHARD_SIZE = 1000  # about 22 MB per shard for the 10 x 256 W+ of the embedded GAN
QUICK_SHARD_SIZE = 128
DEFAULT_TRUNCATION = 1.0  # the paper samples the mapping network untruncated: RigNet should see all of W
SHARD_KEYS = ("z", "w", "images", "params", "landmarks", "detected_landmarks", "landmark_confidence", "face_found",
              "index")
#: The manifest's ``landmarks_detector`` for :class:`~stylerig_lite.landmarks.LandmarkDetector` (the default).
DETECTOR_NAME = "dlib 68-point (face_recognition_models 0.3.0)"

PathLike = Union[str, os.PathLike]


class CorpusError(ValueError):
    """A corpus folder is incomplete, corrupt, or belongs to another generator/estimator/seed."""


def quick_mode() -> bool:
    """True when ``STYLERIG_LITE_QUICK=1``: the book's smoke builds use small corpora."""
    return os.environ.get("STYLERIG_LITE_QUICK", "").strip().lower() in {"1", "true", "yes"}


# ----------------------------------------------------------------------------
# Hashes and seeds.


def device_of(module: Any) -> torch.device:
    """The device of a network's parameters (CPU for parameterless stand-ins)."""
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


# ----------------------------------------------------------------------------
# G and F on batches.


@torch.no_grad()
def synthesize(G: Any, ws: torch.Tensor, image_size: Optional[int] = None) -> torch.Tensor:
    """``G.synthesis(ws)`` with constant noise, clamped to [-1, 1]: ``[B, num_ws, w_dim] -> [B, 3, S, S]``.

    Constant noise makes the image a function of ``ws`` alone. The clamp is the
    range images are stored and shown in; a GAN overshoots it slightly.
    ``image_size`` S (default the generator's ``img_resolution``): a generator that
    lists S in its ``resolutions`` makes it directly (the photoreal MobileStyleGAN's
    256-px path, :mod:`stylerig_lite.mobilestylegan`); otherwise the image is
    area-averaged down to S, which must divide the generator's resolution.
    """
    assert_shape(ws, [None, G.num_ws, G.w_dim], "ws (W+ latents)")
    assert_finite(ws, "ws (W+ latents)")
    native = int(getattr(G, "img_resolution", 0) or 0)
    ws = ws.to(device_of(G))
    if image_size is None or int(image_size) == native:
        images = G.synthesis(ws, noise_mode="const")
    elif int(image_size) in tuple(getattr(G, "resolutions", ())):
        images = G.synthesis(ws, noise_mode="const", resolution=int(image_size))
    elif native and int(image_size) < native and native % int(image_size) == 0:
        images = nnf.avg_pool2d(G.synthesis(ws, noise_mode="const"), native // int(image_size))
    else:
        raise ValueError(f"image_size {image_size} is not a resolution this generator makes ({native} px"
                         f"{', or ' + str(tuple(G.resolutions)) if hasattr(G, 'resolutions') else ''}) nor a divisor "
                         f"of it; pass one of those")
    return images.clamp(-1.0, 1.0)


@torch.no_grad()
def estimate_images(estimator: Any, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """An estimator's ``(params [B, 196], landmarks [B, 68, 2])`` for GAN images in [-1, 1].

    Images of another size than the estimator's input (say an FFHQ generator's
    1024 px) are resized for it (antialiased bilinear); landmarks are in pixels
    of the estimator's input. Works with any object that has
    ``estimate(images, value_range=(-1, 1)) -> (FaceParams, landmarks)``.
    """
    assert_shape(images, [None, 3, None, None], "images (GAN images [B, 3, H, W])")
    # GAN outputs overshoot [-1, 1] (and are clamped here); values past twice its span are another range.
    assert_value_range(images, (-1.0, 1.0), "images (GAN images for the estimator)", tolerance=1.0)
    config = getattr(estimator, "config", None)
    size = getattr(config, "image_size", None)
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        images = nnf.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    params, landmarks = estimator.estimate(images.clamp(-1.0, 1.0), value_range=(-1.0, 1.0))
    vector = params.to_vector() if hasattr(params, "to_vector") else params
    return vector.float().cpu(), landmarks.float().cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, H, W, 3]`` uint8 (the storage format); GAN overshoot is clamped."""
    assert_shape(images, [None, 3, None, None], "images ([B, 3, H, W] in [-1, 1])")
    assert_value_range(images, (-1.0, 1.0), "images (to store as uint8)", tolerance=1.0)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`to_uint8`: ``[B, H, W, 3]`` uint8 -> ``[B, 3, H, W]`` float in [-1, 1]."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise TypeError(f"from_uint8 takes stored uint8 images [B, H, W, 3] (0..255), got dtype {images.dtype}; "
                        "float images need no conversion (GAN images are in [-1, 1]; [0, 1] ones: images * 2 - 1)")
    assert_shape(images, [None, None, None, 3], "images (uint8 [B, H, W, 3], channels last)")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@functools.lru_cache(maxsize=1)
def _default_detector() -> Any:
    from .landmarks import LandmarkDetector

    return LandmarkDetector()


def detector_name(detector: Any) -> str:
    """The manifest's ``landmarks_detector`` for a detector: :data:`DETECTOR_NAME` for dlib's, else its ``name``."""
    from .landmarks import LandmarkDetector

    if type(detector) is LandmarkDetector and detector.min_size == _default_min_size():
        return DETECTOR_NAME
    if isinstance(detector, LandmarkDetector):
        return f"{DETECTOR_NAME}, min_size {detector.min_size}"
    return str(getattr(detector, "name", None) or type(detector).__qualname__)


def _default_min_size() -> int:
    from .landmarks import MIN_SIZE

    return MIN_SIZE


def detect_stored(detector: Any, images: np.ndarray) -> Dict[str, np.ndarray]:
    """The detector on stored images (uint8 ``[n, H, W, 3]``): the shard's ``detected_landmarks`` (float32
    ``[n, 68, 2]``, NaN where no face), ``landmark_confidence`` (float32 ``[n]``, NaN where no face or a fallback
    box) and ``face_found`` (bool ``[n]``). ``detector`` has ``detect(images, value_range) -> Detections``."""
    n = len(images)
    if n == 0:
        return {"detected_landmarks": np.zeros((0, NUM_DETECTED_POINTS, 2), np.float32),
                "landmark_confidence": np.zeros(0, np.float32), "face_found": np.zeros(0, bool)}
    found_ = detector.detect(from_uint8(images), value_range=(-1.0, 1.0))
    points = torch.as_tensor(found_.points).detach().float().cpu().numpy().copy()
    confidence = torch.as_tensor(found_.confidence).detach().float().cpu().numpy().copy()
    found = torch.as_tensor(found_.found).detach().cpu().numpy().astype(bool)
    for name, array, shape in (("points", points, (n, NUM_DETECTED_POINTS, 2)), ("confidence", confidence, (n,)),
                               ("found", found, (n,))):
        if array.shape != shape:
            raise ValueError(f"landmark detector returned {name} of shape {array.shape}, expected {shape}")
    points[~found] = np.nan  # a missing face is recorded, never invented
    confidence[~found] = np.nan
    return {"detected_landmarks": points.astype(np.float32), "landmark_confidence": confidence.astype(np.float32),
            "face_found": found}


@torch.no_grad()
def sample_latents(G: Any, count: int, *, seed: int = 0, start: int = 0, truncation: float = DEFAULT_TRUNCATION,
                   batch: int = 256, stream: str = "corpus") -> torch.Tensor:
    """The W+ latents ``[N, num_ws, w_dim]`` of items ``start .. start + count - 1`` of the corpus of ``seed``.

    The mapping network only, no images: exactly the ``'w'`` that :func:`sample_pairs` (and so
    :func:`make_corpus`) stores for these items when ``mixing`` is 0. What a latent F needs to
    read a corpus's parameters, and so what the linear baseline is fitted on with a latent F:
    for the photoreal generator it skips a 256-px synthesis per item.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    z = sample_z(G.z_dim, seed, start, count, stream=stream)
    device = device_of(G)
    ws = [G.mapping(z[i : i + batch].to(device), None, truncation_psi=truncation).float().cpu()
          for i in range(0, count, batch)]
    return torch.cat(ws) if ws else torch.zeros(0, G.num_ws, G.w_dim)


@torch.no_grad()
def sample_pairs(
    G: Any,
    F: Any,
    count: int,
    *,
    seed: int = 0,
    start: int = 0,
    truncation: float = DEFAULT_TRUNCATION,
    batch: int = 64,
    stream: str = "corpus",
    on_batch: Optional[Callable[[int], None]] = None,
    image_size: Optional[int] = None,
    mixing: float = 0.0,
) -> Dict[str, torch.Tensor]:
    """Items ``start .. start + count - 1`` of the corpus of ``seed``, in memory.

    Returns ``{'z' [N, z_dim], 'w' [N, num_ws, w_dim], 'images' [N, 3, H, W]
    in [-1, 1] (float, before 8-bit storage), 'params' [N, 196],
    'landmarks' [N, 68, 2], 'index' [N]}``. ``params`` are F's estimates on the
    float images (NaN when ``F`` is None: no image F for this generator, e.g. the
    photoreal one, whose faces FaceWorld's F was never trained on). ``image_size``:
    the stored resolution (default the generator's; see :func:`synthesize`). ``mixing``: the
    probability that an item's W+ is style-mixed (:func:`mixing_plan`); 0, the paper's corpus, keeps
    every W+ row equal.
    This is what :func:`make_corpus` writes, shard by shard; the
    evaluation fits its linear baseline on it when no corpus folder is given.
    ``on_batch(n)`` is called after every ``n`` items (progress bars).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    z = sample_z(G.z_dim, seed, start, count, stream=stream)
    crossover = mixing_plan(seed, start, count, G.num_ws, mixing) if mixing > 0 else None
    z_mix = sample_z(G.z_dim, seed, start, count, stream=f"{stream}-mix") if crossover is not None else None
    out: Dict[str, list] = {key: [] for key in ("w", "images", "params", "landmarks")}
    device = device_of(G)
    for i in range(0, count, batch):
        ws = G.mapping(z[i : i + batch].to(device), None, truncation_psi=truncation)  # [b, num_ws, w_dim]
        if crossover is not None:  # rows from the crossover on come from a second latent
            other = G.mapping(z_mix[i : i + batch].to(device), None, truncation_psi=truncation)
            rows = torch.arange(G.num_ws, device=ws.device)[None, :, None]
            ws = torch.where(rows >= crossover[i : i + batch].to(ws.device)[:, None, None], other, ws)
        images = synthesize(G, ws, image_size=image_size)
        if F is None:
            params = torch.full((ws.shape[0], NUM_PARAMS), float("nan"))
            landmarks = torch.full((ws.shape[0], NUM_LANDMARKS, 2), float("nan"))
        else:
            params, landmarks = estimate_images(F, images)
        out["w"].append(ws.float().cpu())
        out["images"].append(images.float().cpu())
        out["params"].append(params)
        out["landmarks"].append(landmarks)
        if on_batch is not None:
            on_batch(ws.shape[0])
    if count == 0:
        res = image_size or getattr(G, "img_resolution", 64)
        return {"z": z, "w": torch.zeros(0, G.num_ws, G.w_dim), "images": torch.zeros(0, 3, res, res),
                "params": torch.zeros(0, NUM_PARAMS), "landmarks": torch.zeros(0, NUM_LANDMARKS, 2),
                "index": torch.zeros(0, dtype=torch.long)}
    result = {key: torch.cat(values) for key, values in out.items()}
    result["z"] = z
    result["index"] = torch.arange(start, start + count, dtype=torch.long)
    return result


def mixing_plan(seed: int, start: int, count: int, num_ws: int, probability: float) -> torch.Tensor:
    """Crossover rows ``[count]`` of items ``start ..``: ``num_ws`` (no mixing) with probability ``1 - p``, else
    uniform in ``1 .. num_ws - 1``; a function of ``(seed, item)`` alone, like the latents."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mixing probability must be in [0, 1], got {probability}")
    out = torch.full((count,), num_ws, dtype=torch.long)
    for i in range(count):
        generator = torch.Generator().manual_seed(latent_seed(seed, start + i, "corpus-mixing"))
        u, row = torch.rand(1, generator=generator), torch.randint(1, max(num_ws, 2), (1,), generator=generator)
        if float(u) < probability and num_ws > 1:
            out[i] = int(row)
    return out


# ----------------------------------------------------------------------------
# Writing a corpus.


#: ``estimator=NO_ESTIMATOR``: store no image-F estimates (NaN ``params``/``landmarks``). The default
#: for the photoreal generator, whose faces FaceWorld's image F was never trained on.
NO_ESTIMATOR = "none"
#: Stored resolution per generator name when ``image_size`` is not given: the photoreal corpus is kept
#: at 256 px (what its latent F trains on and its editor shows), FaceWorld's at its native 64 px.
DEFAULT_IMAGE_SIZE: Dict[str, int] = {"faceworld": 64, "ffhq": 256}


def _resolve_network(network: Any, kind: str) -> Tuple[Any, Optional[str]]:
    """``(module, file sha256 or None)`` for a module, a path, a generator name, or None (the embedded default).

    Generators by name (``'faceworld'``, ``'ffhq'``, see :func:`stylerig_lite.pretrained.generator_by_name`);
    the file sha256 of the photoreal one is the combined sha256 of its IR files. ``estimator`` may be
    :data:`NO_ESTIMATOR` (``(None, None)``).
    """
    from . import pretrained

    if kind == "estimator" and network == NO_ESTIMATOR:
        return None, None
    if kind == "generator" and isinstance(network, str) and network in pretrained.GENERATOR_NAMES:
        if network == "ffhq":
            G = pretrained.photoreal_generator()
            return G, G.generator_sha256
        network = None
    if network is not None and not isinstance(network, (str, os.PathLike)):
        return network, None
    if network is None:
        name = "generator" if kind == "generator" else "face_estimator"
        try:
            path = pretrained.embedded_path(name)
        except pretrained.WeightsError as error:
            flag = "--generator" if kind == "generator" else "--estimator"
            raise FileNotFoundError(
                f"no {kind}: the embedded one is not available ({error}). Pass {flag} PATH "
                f"(a `stylerig-lite train-{'gan' if kind == 'generator' else 'f'}` checkpoint)"
            ) from None
    else:
        path = Path(network)
        if not path.is_file():
            names = f" or a name ({', '.join(pretrained.GENERATOR_NAMES)})" if kind == "generator" else (
                f" or {NO_ESTIMATOR!r}")
            raise FileNotFoundError(f"{kind} checkpoint not found: {path} (expected a checkpoint file{names})")
    module = pretrained.generator(path) if kind == "generator" else pretrained.face_estimator(path)
    return module, sha256_file(path)


def corpus_manifest(G: Any, F: Any, *, count: int, seed: int, shard_size: int, truncation: float,
                    generator_file_sha256: Optional[str] = None, estimator_file_sha256: Optional[str] = None,
                    landmarks_detector: str = DETECTOR_NAME, image_size: Optional[int] = None,
                    mixing: float = 0.0) -> Dict[str, Any]:
    """The manifest a corpus of these settings has (see the module docstring).

    ``F`` None: no image-F estimates (``estimator_sha256`` None). ``image_size``: the stored resolution
    (default the generator's).

    ``seconds_per_1000`` and ``face_found_fraction`` are None here; :func:`make_corpus` fills them in as it writes.
    """
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "count": int(count),
        "seed": int(seed),
        "shard_size": int(shard_size),
        "truncation": float(truncation),
        "mixing": float(mixing),
        "noise_mode": "const",
        "num_ws": int(G.num_ws),
        "w_dim": int(G.w_dim),
        "z_dim": int(G.z_dim),
        "image_size": int(image_size or getattr(G, "img_resolution", 64)),
        # The state hashes identify the networks; the file hashes (when loaded from a file)
        # match weights/manifest.json and `sha256sum`.
        "generator_sha256": module_sha256(G),
        "estimator_sha256": None if F is None else module_sha256(F),
        "generator_file_sha256": generator_file_sha256,
        "estimator_file_sha256": estimator_file_sha256,
        "landmarks_detector": str(landmarks_detector),
        # Measured while making the corpus (rank 0's shards of this run; G + F + detector + writing):
        "seconds_per_1000": None,
        "face_found_fraction": None,  # over all shards written so far (all of them once make_corpus returns)
    }


# Settings that define the items; a folder made with other values holds other pairs.
_IDENTITY_KEYS = ("format", "version", "seed", "shard_size", "truncation", "mixing", "noise_mode", "num_ws", "w_dim",
                  "z_dim", "image_size", "generator_sha256", "estimator_sha256", "landmarks_detector")


def _check_manifest(existing: Dict[str, Any], wanted: Dict[str, Any], out: Path) -> None:
    existing = {"mixing": 0.0, **existing}  # corpora made before the mixing option have equal rows
    differ = [k for k in _IDENTITY_KEYS if existing.get(k) != wanted.get(k)]
    if differ:
        def show(manifest: Dict[str, Any]) -> str:
            return ", ".join(
                f"{k}={str(manifest.get(k))[:12] + '...' if k.endswith('sha256') and manifest.get(k) else manifest.get(k)}"
                for k in differ
            )

        what = ("generator" if "generator_sha256" in differ else "estimator" if "estimator_sha256" in differ
                else "landmark detector" if "landmarks_detector" in differ else "settings")
        raise CorpusError(
            f"{out} holds a corpus of another {what} ({show(existing)}); asked for {show(wanted)}. "
            f"Use a new --out folder, or --overwrite to replace this corpus"
        )
    if wanted["count"] < existing["count"]:
        raise CorpusError(
            f"{out} holds a corpus of {existing['count']} pairs; asked for {wanted['count']}. A corpus can grow but "
            f"not shrink: use the first {wanted['count']} items of CorpusDataset, a new --out, or --overwrite"
        )


def shard_path(root: PathLike, index: int) -> Path:
    return Path(root) / f"shard_{index:05d}.npz"


def num_shards(count: int, shard_size: int) -> int:
    return (count + shard_size - 1) // shard_size


def _shard_length(manifest: Dict[str, Any], index: int) -> int:
    return min(manifest["shard_size"], manifest["count"] - index * manifest["shard_size"])


def read_shard(path: PathLike, manifest: Dict[str, Any], index: int) -> Dict[str, np.ndarray]:
    """Load and check one shard; a truncated or foreign file raises :class:`CorpusError`."""
    path = Path(path)
    n = _shard_length(manifest, index)
    fix = (f"delete {path} and rerun `stylerig-lite make-corpus --out {path.parent}` with the same arguments "
           f"(shards are deterministic, so it is re-made identically)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in SHARD_KEYS}
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CorpusError(f"corrupt corpus shard {path} ({type(error).__name__}: {error}); {fix}") from None
    size = manifest["image_size"]
    expected = {
        "z": (n, manifest["z_dim"]),
        "w": (n, manifest["num_ws"], manifest["w_dim"]),
        "images": (n, size, size, 3),
        "params": (n, NUM_PARAMS),
        "landmarks": (n, NUM_LANDMARKS, 2),
        "detected_landmarks": (n, NUM_DETECTED_POINTS, 2),
        "landmark_confidence": (n,),
        "face_found": (n,),
        "index": (n,),
    }
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise CorpusError(f"corrupt corpus shard {path}: {key} has shape {arrays[key].shape}, expected {shape}; {fix}")
    if arrays["face_found"].dtype != np.bool_:
        raise CorpusError(f"corrupt corpus shard {path}: face_found has dtype {arrays['face_found'].dtype}, expected bool; {fix}")
    start = index * manifest["shard_size"]
    if not np.array_equal(arrays["index"], np.arange(start, start + n)):
        raise CorpusError(f"corrupt corpus shard {path}: it does not hold items {start}..{start + n - 1}; {fix}")
    return arrays


def make_corpus(
    out: PathLike,
    count: Optional[int] = None,
    *,
    generator: Any = None,
    estimator: Any = None,
    seed: int = 0,
    shard_size: Optional[int] = None,
    truncation: float = DEFAULT_TRUNCATION,
    batch: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    on_shard: Optional[Callable[[int, Path], None]] = None,
    device: Any = None,
    detector: Any = None,
    image_size: Optional[int] = None,
    mixing: float = 0.0,
) -> Path:
    """Sample ``count`` (w, I_w) pairs with F's estimates into ``out`` (resumable).

    ``generator`` / ``estimator``: a network, a checkpoint path, or None for the
    embedded FaceWorld StyleGAN2 and F; ``generator='ffhq'`` is the photoreal
    MobileStyleGAN (its corpus defaults to ``estimator=NO_ESTIMATOR`` and
    ``image_size=256``, :data:`DEFAULT_IMAGE_SIZE`), ``'faceworld'`` the embedded one.
    ``image_size``: the stored resolution (see :func:`synthesize`). ``mixing``: the probability of a
    style-mixed W+ per item (:func:`mixing_plan`; 0, the default, is the paper's corpus). ``count`` / ``shard_size`` default to
    :data:`DEFAULT_COUNT` / :data:`DEFAULT_SHARD_SIZE` (:data:`QUICK_COUNT` /
    :data:`QUICK_SHARD_SIZE` under ``STYLERIG_LITE_QUICK=1``).

    Rerunning with the same arguments skips complete shards and re-makes any
    missing or corrupt one; a larger ``count`` extends the corpus. A folder whose
    manifest names another generator, estimator, seed, truncation or shard size
    raises :class:`CorpusError` unless ``overwrite=True``, which deletes its
    shards first. Each shard is written to a temporary file and renamed, so an
    interruption never leaves a half-written shard. ``on_shard(index, path)``
    is called after each shard is written (tests interrupt a run with it).
    ``detector`` (default: dlib's :class:`~stylerig_lite.landmarks.LandmarkDetector`, loaded once per process)
    finds the ``detected_landmarks`` on each stored image; any object with
    ``detect(images, value_range) -> Detections`` will do (tests pass a fake; its ``name`` attribute, or its
    class name, is the manifest's ``landmarks_detector``, and a folder made with another detector is refused).
    While writing, rank 0 updates the manifest's ``seconds_per_1000`` (its shards of this run) and
    ``face_found_fraction`` (the shards written so far) after each shard, and the fraction over all shards
    at the end.
    While it writes, ``out/.lock`` is held (:func:`~stylerig_lite.io_utils.folder_lock`): a second
    writer on the same folder, with ``overwrite=True`` too, fails at once with
    :class:`~stylerig_lite.io_utils.FolderLockedError` naming the folder and the first writer's pid.
    Returns ``out``.
    """
    quick = quick_mode()
    count = (QUICK_COUNT if quick else DEFAULT_COUNT) if count is None else int(count)
    shard_size = (QUICK_SHARD_SIZE if quick else DEFAULT_SHARD_SIZE) if shard_size is None else int(shard_size)
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if not 0.0 <= float(truncation) <= 1.0:
        raise ValueError(f"truncation psi must be in [0, 1], got {truncation}")
    if isinstance(generator, str) and generator in DEFAULT_IMAGE_SIZE:
        image_size = DEFAULT_IMAGE_SIZE[generator] if image_size is None else image_size
        if generator == "ffhq" and estimator is None:
            estimator = NO_ESTIMATOR
    G, g_file = _resolve_network(generator, "generator")
    F, f_file = _resolve_network(estimator, "estimator")
    if image_size is not None:
        image_size = int(image_size)
        native = int(getattr(G, "img_resolution", 0) or 0)
        if image_size not in tuple(getattr(G, "resolutions", ())) and not (
                native and image_size <= native and native % image_size == 0):
            raise ValueError(f"image_size {image_size} is not a resolution this generator makes ({native} px) nor a "
                             f"divisor of it")
    for net in (G, F):
        if isinstance(net, torch.nn.Module):
            net.eval()
            # ``device`` (default: where the networks are): latents are drawn on the CPU and moved,
            # images and estimates come back to the CPU, network hashes are of CPU copies.
            if device is not None and torch.device(device) != device_of(net):
                net.to(device)

    if detector is None:
        detector = _default_detector()
    elif not callable(getattr(detector, "detect", None)):
        raise TypeError(f"detector must have a detect(images, value_range) method, got {type(detector).__name__}")

    root = Path(out)
    manifest = corpus_manifest(G, F, count=count, seed=seed, shard_size=shard_size, truncation=truncation,
                               generator_file_sha256=g_file, estimator_file_sha256=f_file,
                               landmarks_detector=detector_name(detector), image_size=image_size,
                               mixing=mixing)
    # In a process group rank 0 prepares the folder and lists the shards to make; every rank gets the
    # list (or rank 0's error, so that no rank waits for a rank that gave up). Rank 0 holds the folder's
    # lock (io_utils.folder_lock) until the corpus is complete: a second make-corpus on the same folder
    # (with --overwrite too) fails at once instead of writing the same shards.
    with contextlib.ExitStack() as lock:
        return _make(root, manifest, lock, G, F, detector, count=count, seed=seed, shard_size=shard_size,
                     truncation=truncation, batch=batch, overwrite=overwrite, progress=progress, on_shard=on_shard,
                     image_size=image_size, mixing=mixing)


def _found_counts(root: Path, manifest: Dict[str, Any], cache: Dict[int, Tuple[int, int]]) -> Tuple[int, int]:
    """``(faces found, images)`` over the shards of ``root`` that exist (each shard read once into ``cache``)."""
    for i in range(num_shards(manifest["count"], manifest["shard_size"])):
        if i in cache:
            continue
        try:
            with np.load(shard_path(root, i), allow_pickle=False) as data:
                found = data["face_found"]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            continue  # not written yet (or being re-made)
        cache[i] = (int(found.sum()), int(found.size))
    return sum(f for f, _ in cache.values()), sum(n for _, n in cache.values())


def _update_measurements(root: Path, seconds: float, items: int, found_cache: Dict[int, Tuple[int, int]]) -> None:
    """Rank 0: the manifest's ``seconds_per_1000`` (when this run made items) and ``face_found_fraction``."""
    path = root / "manifest.json"
    written = json.loads(path.read_text())
    if items:
        written["seconds_per_1000"] = round(1000.0 * seconds / items, 3)
    found, total = _found_counts(root, written, found_cache)
    written["face_found_fraction"] = round(found / total, 6) if total else None
    atomic_write_json(path, written)


def _make(root: Path, manifest: Dict[str, Any], lock: contextlib.ExitStack, G: Any, F: Any, detector: Any, *,
          count: int, seed: int, shard_size: int, truncation: float, batch: int, overwrite: bool, progress: bool,
          on_shard: Optional[Callable[[int, Path], None]], image_size: Optional[int] = None,
          mixing: float = 0.0) -> Path:
    """:func:`make_corpus` once the networks are loaded: lock, prepare the folder, write the missing shards."""
    plan: Any = None
    if distributed.is_main():
        try:
            try:
                lock.enter_context(folder_lock(root, "corpus"))
            except FolderLockedError as error:
                if overwrite:
                    raise FolderLockedError(f"refusing to --overwrite: {error}") from None
                raise
            plan = _prepare_folder(root, manifest, overwrite)
        except (ValueError, OSError, FolderLockedError) as error:
            plan = error
    plan = distributed.broadcast_object(plan)
    if isinstance(plan, BaseException):
        raise plan
    todo = plan[distributed.rank()::distributed.world_size()]
    world = distributed.world_size()
    bar = None
    if progress and distributed.is_main():
        from tqdm.auto import tqdm

        done = count - sum(_shard_length(manifest, i) for i in plan)
        desc = f"corpus -> {root.name}" + (f" (rank 0's shards of {world} ranks)" if world > 1 else "")
        total = count if world == 1 else sum(_shard_length(manifest, i) for i in todo)
        bar = tqdm(total=total, initial=done if world == 1 else 0, desc=desc, unit="pair", dynamic_ncols=True)
    completed = False
    seconds, made = 0.0, 0  # this rank's shards of this run: the manifest's seconds_per_1000
    found_cache: Dict[int, Tuple[int, int]] = {}  # shard -> (faces found, images), for face_found_fraction
    try:
        for i in todo:
            n = _shard_length(manifest, i)
            started = time.perf_counter()
            items = sample_pairs(G, F, n, seed=seed, start=i * shard_size, truncation=truncation, batch=batch,
                                 on_batch=bar.update if bar is not None else None, image_size=image_size,
                                 mixing=mixing)
            images = to_uint8(items["images"])
            arrays = {
                "z": items["z"].float().numpy(),
                "w": items["w"].float().numpy(),
                "images": images,
                "params": items["params"].float().numpy(),
                "landmarks": items["landmarks"].float().numpy(),
                **detect_stored(detector, images),  # on the stored 8-bit pixels, as a reader sees them
                "index": items["index"].numpy(),
            }
            path = shard_path(root, i)
            tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}")
            with open(tmp, "wb") as handle:  # a file object: np.savez would append '.npz' to a name
                np.savez(handle, **arrays)
            os.replace(tmp, path)
            seconds += time.perf_counter() - started
            made += n
            if distributed.is_main():
                found_cache.pop(i, None)
                _update_measurements(root, seconds, made, found_cache)
            if on_shard is not None:
                on_shard(i, path)
        completed = True
    finally:
        if bar is not None:
            bar.close()
    if completed:
        distributed.barrier()  # every shard exists
        if distributed.is_main():
            _update_measurements(root, seconds, made, {})  # the fraction over all shards, whoever made them
        distributed.barrier()  # the corpus (manifest included) is complete when any rank returns
    return root


def _prepare_folder(root: Path, manifest: Dict[str, Any], overwrite: bool) -> list:
    """Check or write ``root``'s manifest, drop stale temporary files; the shard indices still to make."""
    manifest_path = root / "manifest.json"
    if overwrite and manifest_path.exists():
        remove_corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    if manifest_path.exists():
        existing = _read_manifest(root)
        _check_manifest(existing, manifest, root)
        if existing["count"] != manifest["count"]:  # growing: the old last shard may be short, re-make it below
            atomic_write_json(manifest_path, manifest)
    else:
        atomic_write_json(manifest_path, manifest)
    for stale in root.glob(".shard_*.tmp*"):  # left by an interrupted write
        stale.unlink()

    todo = []
    for i in range(num_shards(manifest["count"], manifest["shard_size"])):
        path = shard_path(root, i)
        if path.exists():
            try:
                read_shard(path, manifest, i)
                continue
            except CorpusError as error:
                print(f"make-corpus: re-making {path.name}: {error}", file=sys.stderr)
        todo.append(i)
    return todo


def corpus_runs() -> Dict[str, Dict[str, Any]]:
    """The manifests of the book's two full corpora, as they were made (``stylerig_lite/data/corpus_runs.json``).

    ``{'faceworld': manifest, 'ffhq': manifest}``, each with the ``command`` that made it and the figures measured
    while making it (``seconds_per_1000``, ``face_found_fraction``): chapter 2 quotes them in every mode.
    """
    import importlib.resources

    path = importlib.resources.files("stylerig_lite") / "data" / "corpus_runs.json"
    return json.loads(path.read_text())


def remove_corpus(root: PathLike) -> None:
    """Delete a corpus's manifest and shards (only those: other files in the folder stay)."""
    root = Path(root)
    for path in list(root.glob("shard_*.npz")) + list(root.glob(".shard_*.tmp*")):
        path.unlink()
    (root / "manifest.json").unlink(missing_ok=True)


def _read_manifest(root: Path) -> Dict[str, Any]:
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a corpus (no manifest.json); make one with `stylerig-lite make-corpus --out {root}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CorpusError(f"{path} is not valid JSON ({error}); remake the corpus with --overwrite") from None
    if manifest.get("format") != FORMAT:
        raise CorpusError(f"{root} is not a (w, I_w) corpus (manifest format {manifest.get('format')!r}, expected {FORMAT!r})")
    if manifest.get("version") == 1:
        raise CorpusError(f"{root} is a corpus of format version 1, without the detected landmarks (detected_landmarks, "
                          f"landmark_confidence, face_found) that version {FORMAT_VERSION} records; re-make it with "
                          f"`stylerig-lite make-corpus --out {root} ... --overwrite` (the same --count/--seed/... as before)")
    if manifest.get("version") != FORMAT_VERSION:
        raise CorpusError(f"{root}: corpus format version {manifest.get('version')!r}; this code reads version {FORMAT_VERSION}. "
                          f"Remake it with `stylerig-lite make-corpus --overwrite --out {root}`")
    return manifest


# ----------------------------------------------------------------------------
# Reading a corpus.


class CorpusDataset(torch.utils.data.Dataset):
    """A corpus folder as a PyTorch dataset (all shards loaded into memory).

    ``dataset[i]`` is a dict: ``'w'`` float32 ``[num_ws, w_dim]``, ``'image'``
    float32 ``[3, H, W]`` in [-1, 1] (from the stored uint8), ``'params'``
    ``[196]`` and ``'landmarks'`` ``[68, 2]`` (F's estimates), ``'detected_landmarks'``
    ``[68, 2]`` (dlib's, NaN where no face was found), ``'landmark_confidence'``
    (a float32 scalar tensor, NaN where no face or a fallback box), ``'face_found'``
    (a bool scalar tensor) and ``'index'`` (int). The whole arrays are attributes too,
    for code that wants them at once (the linear baseline): ``w``, ``z``, ``images``
    (uint8 ``[N, H, W, 3]``), ``params``, ``landmarks``, ``detected_landmarks``,
    ``landmark_confidence``, ``face_found``. ``manifest`` is the folder's manifest.
    """

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.manifest = _read_manifest(self.root)
        shards = num_shards(self.manifest["count"], self.manifest["shard_size"])
        missing = [i for i in range(shards) if not shard_path(self.root, i).exists()]
        if missing:
            raise CorpusError(
                f"{self.root} has {shards - len(missing)} of {shards} shards (first missing: "
                f"{shard_path(self.root, missing[0]).name}); rerun `stylerig-lite make-corpus --out {self.root}` "
                f"with the same arguments to finish it"
            )
        arrays = [read_shard(shard_path(self.root, i), self.manifest, i) for i in range(shards)]

        def cat(key: str) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([a[key] for a in arrays]))

        self.z = cat("z")  # [N, z_dim]
        self.w = cat("w")  # [N, num_ws, w_dim]
        self.images = cat("images")  # [N, H, W, 3] uint8
        self.params = cat("params")  # [N, 196]
        self.landmarks = cat("landmarks")  # [N, 68, 2] F's estimate
        self.detected_landmarks = cat("detected_landmarks")  # [N, 68, 2] dlib's; NaN where no face was found
        self.landmark_confidence = cat("landmark_confidence")  # [N]; NaN where no face or a fallback box
        self.face_found = cat("face_found")  # [N] bool
        self.index = cat("index")  # [N]

    def __len__(self) -> int:
        return self.w.shape[0]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"corpus index {index} out of range for {len(self)} items")
        return {
            "w": self.w[index],
            "image": from_uint8(self.images[index][None])[0],
            "params": self.params[index],
            "landmarks": self.landmarks[index],
            "detected_landmarks": self.detected_landmarks[index],
            "landmark_confidence": self.landmark_confidence[index],
            "face_found": self.face_found[index],
            "index": int(self.index[index]),
        }

    def render_batch(self, rows: torch.Tensor, size: int) -> Dict[str, torch.Tensor]:
        """Rows as the rendering losses see them: ``w`` float, ``images`` ``[n, 3, size, size]`` in [0, 1]
        (area-averaged from the stored size), ``landmarks`` (the detected ones, scaled to ``size``), ``params``."""
        stored = int(self.images.shape[1])
        images = (from_uint8(self.images[rows]) + 1) / 2
        if size != stored:
            images = nnf.interpolate(images, size=(size, size), mode="area")
        return {"w": self.w[rows].float(), "images": images,
                "landmarks": self.detected_landmarks[rows].float() * (size / stored), "params": self.params[rows]}

    def float_images(self, index: Any = slice(None)) -> torch.Tensor:
        """Images ``[n, 3, H, W]`` in [-1, 1] for an index or slice of items."""
        return from_uint8(self.images[index].reshape(-1, *self.images.shape[1:]))

    def __repr__(self) -> str:
        m = self.manifest
        return (f"CorpusDataset({str(self.root)!r}, {len(self)} pairs, W+ {m['num_ws']}x{m['w_dim']}, "
                f"{m['image_size']} px, seed {m['seed']}, truncation {m['truncation']})")


# ----------------------------------------------------------------------------
# Command line (registered in stylerig_lite/cli.py as `make-corpus`).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="corpus folder (an unfinished one with the same arguments is resumed)")
    parser.add_argument("--count", type=positive_int, help=f"pairs to sample, >= 1 (default {DEFAULT_COUNT}; {QUICK_COUNT} with "
                                                  f"STYLERIG_LITE_QUICK=1; the paper used 200,000)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (default 0)")
    parser.add_argument("--truncation", type=float, default=DEFAULT_TRUNCATION,
                        help=f"truncation psi of the mapping network (default {DEFAULT_TRUNCATION}: untruncated, as in the paper)")
    parser.add_argument("--shard-size", type=positive_int, help=f"pairs per shard file (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--generator", help="'faceworld' (the embedded FaceWorld StyleGAN2, the default), 'ffhq' (the "
                                            "photoreal MobileStyleGAN) or a StyleGAN2 checkpoint")
    parser.add_argument("--estimator", help=f"image-F checkpoint whose estimates are stored (default: the embedded F; "
                                            f"'{NO_ESTIMATOR}' for none, the default with --generator ffhq)")
    parser.add_argument("--mixing", type=float, default=0.0,
                        help="probability of a style-mixed W+ per pair (default 0: every row equal, as in the paper)")
    parser.add_argument("--image-size", type=positive_int,
                        help="stored resolution in px (default: 64 for faceworld, 256 for ffhq)")
    parser.add_argument("--batch", type=positive_int, default=64, help="images per G/F batch (default 64)")
    parser.add_argument("--overwrite", action="store_true", help="delete a corpus already in --out first")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """The ``make-corpus`` command; under ``torchrun`` every process runs it (see :mod:`stylerig_lite.distributed`)."""
    return distributed.launch_command("make-corpus", getattr(args, "device", "auto"), lambda device: _run(args, device))


def _run(args: argparse.Namespace, device: Optional[torch.device] = None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_cuda(device or "cpu", tf32=getattr(args, "tf32", True))
    try:
        root = make_corpus(args.out, args.count, generator=args.generator, estimator=args.estimator, seed=args.seed,
                           shard_size=args.shard_size, truncation=args.truncation, batch=args.batch,
                           overwrite=args.overwrite, progress=not args.quiet, device=device,
                           image_size=getattr(args, "image_size", None), mixing=getattr(args, "mixing", 0.0))
    except (ValueError, FileNotFoundError, FolderLockedError) as error:  # bad options, foreign or locked folder, missing weights
        print(f"stylerig-lite make-corpus: error: {error}", file=sys.stderr)
        return 2
    if not distributed.is_main():
        return 0
    manifest = _read_manifest(root)
    print(f"corpus of {manifest['count']} pairs in {root} (W+ {manifest['num_ws']}x{manifest['w_dim']}, "
          f"{manifest['image_size']} px, seed {manifest['seed']})")
    return 0
