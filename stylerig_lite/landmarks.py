"""Sparse 2D face landmarks: dlib's 68-point shape predictor, what the latent F is trained against.

Floor: data. Chapter 4's latent F (the paper's F: W+ -> 3DMM parameters) is trained
self-supervised on (w, I_w) pairs with a sparse-landmark term: landmarks detected
automatically on I_w, compared with the projected landmark vertices of the face model.
This module is that detector and the correspondence between its points and the
ICT-FaceKit vertices.

Why dlib and not MediaPipe: the independent judge (:mod:`stylerig_lite.judge`) reads
MediaPipe FaceMesh, and F must not be trained against the detector that later referees
it (issue 23), so F's landmarks come from a different detector with different training
data: dlib's 68-point shape predictor (an ensemble of regression trees, Kazemi and
Sullivan 2014), the ``shape_predictor_68_face_landmarks`` model shipped by the
``face_recognition_models`` package, located by
``face_recognition_models.pose_predictor_model_location()``. Its points follow the
iBUG 300-W layout; the paper used 66 of them. **Licence:** dlib is Boost-licensed, but
this model was trained on the iBUG 300-W data set, whose licence excludes commercial
use: treat the landmarks (and anything trained on them) as non-commercial.

Pipeline per image (as :mod:`stylerig_lite.identity` does): checked by
:func:`~stylerig_lite.checks.images_to_unit`, upsampled (bicubic) so that its shorter
side is at least ``min_size`` px, face box from dlib's HOG detector
(``detector.run(image, 0, -1)``: the best-scoring box, its score is the confidence);
when that finds nothing, the largest box found with the image upsampled once more
(``detector(image, 1)``), with confidence NaN; when that finds nothing either the
image is recorded as ``found=False`` with NaN points. There is deliberately **no
fixed fallback box**: a missing face is recorded, never invented, since F is trained
against these points. Points are returned in pixels of the *input* image in the
camera's convention (:mod:`stylerig_lite.camera`: pixel ``(i, j)`` has its centre at
``(j + 0.5, i + 0.5)``), so they compare directly with FaceWorld's ``landmarks``.

Correspondence (:data:`ICT_CORRESPONDENCE`). The face model's ``landmark_indices`` (68
ICT-FaceKit vertices, upstream ``idx_to_landmark_verts``) are already in iBUG order:
on 64 FaceWorld renders, for 65 of the 68 iBUG points the nearest projected ICT
landmark (median over images) is the one with the same index, and the three others
(17 -> 18, 23 -> 43, 51 -> 62) are neighbours within 1-2 px of a point whose own
error is also small; a permuted order would show errors of several pixels. So
``ICT_CORRESPONDENCE[i] = i``: iBUG point ``i`` is ``model.landmark_indices[i]``.
Groups (iBUG indices): :data:`CONTOUR` 0-16 (the jaw line), :data:`BROWS` 17-26,
:data:`NOSE` 27-35, :data:`EYES` 36-47, :data:`MOUTH` 48-67 (outer lip 48-59, inner lip
60-67). The contour points are **view-dependent**: a detector puts them on the
silhouette of the cheek and jaw, which moves over the surface as the head turns, while
an ICT landmark is a fixed vertex; they agree only near frontal views, so a loss on
them should either use a silhouette-sliding correspondence or a low weight.
:data:`SPARSE_66` is the paper's 66: all but the inner-mouth corners 60 and 64, which
duplicate the outer corners 48 and 54 on closed mouths. :data:`RIGID` (brows, nose,
eyes; 17-47) are the points that expressions move least, for pose alone.

Measured by :func:`landmark_error` on 256 FaceWorld renders (seed
:data:`MEASUREMENT_SEED`), at 64 px against the exact projected ICT landmarks, median
error in px: contour 1.64, brows 1.63, nose 0.80, eyes 0.81, mouth 0.91, rigid 0.98,
non-contour 0.95, all 1.09; found 255 of 256 (all by the first pass), one of them
(0.4%) a false box more than :data:`OUTLIER_PX` off; 7.5-14 ms per image on one CPU
core (the upper figure on a loaded machine). For scale: FaceWorld's eye centres are
about 10.9 px apart, so the detector's own error is ~0.09 of the inter-ocular
distance. Part of it is a systematic offset, not noise: dlib's points sit lower than
ICT's vertices (median dy +1.6 px for the brows, +0.75 px for the eyes, +0.6 px for
the nose, ~0 px in x), the two annotations putting e.g. the brow on different edges.
dlib returns integer points on the upsampled image: a 0.25 px quantum at 64 px.
Scores below 0 are below dlib's default detection threshold; such boxes are kept
(``found``) with their score, and a consumer may drop them: on 32 renders the one
false box (30 px off) scored -0.70, but eight good faces also scored below 0.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as nnf

from .checks import images_to_unit

__all__ = [
    "BROWS",
    "CONTOUR",
    "EYES",
    "GROUPS",
    "ICT_CORRESPONDENCE",
    "MEASUREMENT_SEED",
    "MIN_SIZE",
    "MOUTH",
    "NOSE",
    "NUM_POINTS",
    "OUTLIER_PX",
    "RIGID",
    "SPARSE_66",
    "Detections",
    "LandmarkDetector",
    "LandmarkError",
    "require_dlib",
    "landmark_error",
    "shared_detector",
]

NUM_POINTS = 68
MIN_SIZE = 256  # px; 64 px images are upsampled to this before detection
OUTLIER_PX = 5.0  # px at the input resolution: a found face this far off (median, non-contour) is a false box
MEASUREMENT_SEED = 40_000  # the FaceWorld renders landmark_error measures on (disjoint from the judge's seeds)

#: iBUG 300-W groups (indices into the 68 points).
CONTOUR: Tuple[int, ...] = tuple(range(0, 17))  # the jaw line: view-dependent silhouette points
BROWS: Tuple[int, ...] = tuple(range(17, 27))
NOSE: Tuple[int, ...] = tuple(range(27, 36))
EYES: Tuple[int, ...] = tuple(range(36, 48))
MOUTH: Tuple[int, ...] = tuple(range(48, 68))
GROUPS: Dict[str, Tuple[int, ...]] = {"contour": CONTOUR, "brows": BROWS, "nose": NOSE, "eyes": EYES, "mouth": MOUTH}
#: The paper's 66: iBUG without the inner-mouth corners 60 and 64 (duplicates of 48 and 54).
SPARSE_66: Tuple[int, ...] = tuple(i for i in range(NUM_POINTS) if i not in (60, 64))
#: Brows, nose and eyes: the points that expressions move least.
RIGID: Tuple[int, ...] = BROWS + NOSE + EYES
#: ``ICT_CORRESPONDENCE[i]``: the position in the face model's ``landmark_indices`` of iBUG point ``i``
#: (ICT-FaceKit's 68 landmark vertices are in iBUG order; measured, see the module docstring).
ICT_CORRESPONDENCE: Tuple[int, ...] = tuple(range(NUM_POINTS))


class LandmarkError(RuntimeError):
    """dlib or its models (``face_recognition_models``) are not installed."""


def require_dlib(what: str = "landmarks"):
    """``(dlib, face_recognition_models)``, or a :class:`LandmarkError` naming ``what`` needs them and the install."""
    try:
        import dlib
        import face_recognition_models
    except ImportError as error:
        raise LandmarkError(f"{what} need dlib and its models: `pip install dlib-bin==20.0.1.post1 "
                            f"face-recognition-models==0.3.0` (make venv installs both; import failed: {error})") from error
    return dlib, face_recognition_models


@dataclasses.dataclass
class Detections:
    """Landmarks of ``N`` images, in pixels of the input images (pixel centres at half-integers)."""

    points: torch.Tensor  # [N, 68, 2] float32 (u right, v down); NaN where found is False
    confidence: torch.Tensor  # [N] float32 HOG score of the box; NaN for the upsampled pass or no face
    found: torch.Tensor  # [N] bool

    def __len__(self) -> int:
        return self.points.shape[0]


class LandmarkDetector:
    """dlib's 68 iBUG landmarks of images ``[N, 3, H, W]``: :meth:`detect`."""

    def __init__(self, min_size: int = MIN_SIZE):
        if int(min_size) < 1:
            raise ValueError(f"min_size must be positive, got {min_size}")
        dlib, models = require_dlib()
        self.min_size = int(min_size)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(models.pose_predictor_model_location())

    def _pixels(self, images: torch.Tensor, value_range: Tuple[float, float]) -> Tuple[np.ndarray, float, float]:
        x = images_to_unit(images, value_range)
        height, width = x.shape[-2:]
        scale = max(1.0, self.min_size / min(height, width))
        size = (int(round(height * scale)), int(round(width * scale)))
        if size != (height, width):
            x = nnf.interpolate(x, size=size, mode="bicubic", align_corners=False)
        pixels = np.ascontiguousarray((x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))
        return pixels, width / size[1], height / size[0]

    def _box(self, image: np.ndarray) -> Tuple[Optional[object], float]:
        boxes, scores, _ = self._detector.run(image, 0, -1)
        if len(boxes):
            best = int(np.argmax(scores))
            return boxes[best], float(scores[best])
        boxes = self._detector(image, 1)
        if len(boxes):
            return max(boxes, key=lambda b: b.area()), float("nan")
        return None, float("nan")

    def detect(self, images: torch.Tensor, value_range: Tuple[float, float] = (-1.0, 1.0)) -> Detections:
        """The 68 landmarks of each image, with the detector's confidence and whether a face was found."""
        pixels, scale_u, scale_v = self._pixels(images, value_range)
        n = len(pixels)
        points = np.full((n, NUM_POINTS, 2), np.nan, dtype=np.float32)
        confidence = np.full(n, np.nan, dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        for i, image in enumerate(pixels):
            box, score = self._box(image)
            if box is None:
                continue
            shape = self._predictor(image, box)
            parts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            # dlib's pixel (x, y) has its centre at the integer; ours at the half-integer.
            points[i] = (parts + 0.5) * np.array([scale_u, scale_v])
            confidence[i] = score
            found[i] = True
        return Detections(torch.from_numpy(points), torch.from_numpy(confidence), torch.from_numpy(found))


    def faces(self, image: np.ndarray) -> List[Tuple[float, torch.Tensor]]:
        """Every face in one photo ``[H, W, 3]`` uint8 RGB at its own size: ``[(box area px², points [68, 2])]``.

        Largest box first; points in the photo's pixels with centres at half-integers (as
        :meth:`detect`). A photo whose shorter side is under 512 px is searched once more,
        upsampled 2x, when nothing is found (HOG misses faces under about 80 px).
        """
        boxes = self._detector(image, 0)
        if not len(boxes) and min(image.shape[:2]) < 512:
            boxes = self._detector(image, 1)
        found = []
        for box in boxes:
            parts = self._predictor(image, box).parts()
            points = torch.tensor([[p.x + 0.5, p.y + 0.5] for p in parts], dtype=torch.float32)
            found.append((float(box.area()), points))
        return sorted(found, key=lambda f: -f[0])


@functools.lru_cache(maxsize=4)
def shared_detector(min_size: int = MIN_SIZE) -> LandmarkDetector:
    """One :class:`LandmarkDetector` per ``min_size`` for the process (loading dlib's predictor costs ~0.1 s)."""
    return LandmarkDetector(min_size)


def landmark_error(count: int = 256, seed: int = MEASUREMENT_SEED,
                   detector: Optional[LandmarkDetector] = None) -> Dict[str, float]:
    """The detector against FaceWorld's exact projected ICT landmarks, on ``count`` renders of set ``seed``.

    Returns, per group (``contour``, ``brows``, ``nose``, ``eyes``, ``mouth``, ``rigid``, ``non_contour``, ``all``), the
    median error in px at FaceWorld's resolution (64 px) over found images and the group's points
    (``<group>_px``), plus ``found_fraction``, ``outlier_fraction`` (images found but with a median
    non-contour error above :data:`OUTLIER_PX`: a box on the wrong place), ``fallback_fraction`` (found by the
    upsampled pass) and
    ``ms_per_image`` (detection only).
    """
    from .datasets import load_or_render_dataset
    from .world import FaceWorld

    detector = detector or LandmarkDetector()
    data = load_or_render_dataset(FaceWorld(), count, seed, cache_dir=False, progress=False)
    images = data.float_images()
    start = time.perf_counter()
    out = detector.detect(images, (0.0, 1.0))
    elapsed = time.perf_counter() - start
    errors = (out.points - data.landmarks[:, list(ICT_CORRESPONDENCE)]).norm(dim=-1)[out.found]  # [M, 68]
    groups = dict(GROUPS, rigid=RIGID, non_contour=BROWS + NOSE + EYES + MOUTH, all=tuple(range(NUM_POINTS)))
    result = {f"{name}_px": float(errors[:, list(index)].median()) if len(errors) else float("nan")
              for name, index in groups.items()}
    per_image = errors[:, list(groups["non_contour"])].median(dim=1).values if len(errors) else errors.new_zeros(0)
    result["found_fraction"] = float(out.found.float().mean())
    result["outlier_fraction"] = float((per_image > OUTLIER_PX).float().sum()) / count
    result["fallback_fraction"] = float((out.found & out.confidence.isnan()).float().mean())
    result["ms_per_image"] = 1000.0 * elapsed / count
    result["resolution"] = float(images.shape[-1])
    return result
