"""Identity distance: dlib's 128-d face descriptor, the preservation measure of every edit.

Floor: evaluation. Chapter 5 (section 8, "Measuring control") reports the identity distance
between a face and its edit. Neither F nor E can read identity at 64 px (their
identity R² on held-out FaceWorld renders is about zero), so the book measures it with
a network trained for exactly that on photographs: dlib's ResNet face descriptor
(``dlib_face_recognition_resnet_model_v1``, shipped by the ``face_recognition_models``
package), whose Euclidean distance separates people at 0.6 on LFW
(:data:`SAME_PERSON_THRESHOLD`).

Pipeline per image: upsample to at least :data:`MIN_SIZE` px (bicubic), find the face
with dlib's HOG detector (falling back to the central box where generated faces sit,
:data:`FALLBACK_BOX`, when it finds none), align with the 5-point landmark model
(trained on dlib's own CC0 data, unlike the non-commercial 68-point model) and compute
the descriptor. Licences: dlib is Boost-licensed; the two models are CC0.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as nnf

from .checks import images_to_unit
from .landmarks import LandmarkError, require_dlib

__all__ = ["FALLBACK_BOX", "MIN_SIZE", "SAME_PERSON_THRESHOLD", "IdentityError", "IdentityMeter"]

SAME_PERSON_THRESHOLD = 0.6  # dlib's documented threshold for the descriptor distance
MIN_SIZE = 256  # px; 64 px GAN images are upsampled to this before detection
#: Where the face is when the detector finds none, as fractions (left, top, right, bottom) of the
#: image: the median HOG box on 256 FaceWorld renders (upsampled to 256 px) was (0.30, 0.30, 0.71, 0.71).
FALLBACK_BOX = (0.30, 0.30, 0.71, 0.71)


#: Raised when dlib or its face models are not installed (the error of :func:`~stylerig_lite.landmarks.require_dlib`).
IdentityError = LandmarkError


class IdentityMeter:
    """128-d face descriptors of images ``[N, 3, H, W]`` and the distances between them."""

    def __init__(self, min_size: int = MIN_SIZE):
        dlib, models = require_dlib("identity distances")
        self.min_size = int(min_size)
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self._rectangle = dlib.rectangle

    def _pixels(self, images: torch.Tensor, value_range: Tuple[float, float]) -> np.ndarray:
        x = images_to_unit(images, value_range)
        size = max(self.min_size, images.shape[-1])
        if images.shape[-1] != size or images.shape[-2] != size:
            x = nnf.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        return np.ascontiguousarray((x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))

    def descriptors(self, images: torch.Tensor, value_range: Tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
        """Descriptors ``[N, 128]`` (float64) and, per image, whether the detector found the face.

        Returns the descriptors; :attr:`last_detected` holds ``[N]`` bool for the call.
        """
        pixels = self._pixels(images, value_range)
        out = np.zeros((len(pixels), 128))
        detected = np.zeros(len(pixels), dtype=bool)
        for i, image in enumerate(pixels):
            size = image.shape[0]
            boxes = self._detector(image, 0)
            if len(boxes):
                box = max(boxes, key=lambda b: b.area())
                detected[i] = True
            else:
                l, t, r, b = (int(round(f * size)) for f in FALLBACK_BOX)
                box = self._rectangle(l, t, r, b)
            shape = self._landmarks(image, box)
            out[i] = np.asarray(self._encoder.compute_face_descriptor(image, shape))
        self.last_detected = torch.from_numpy(detected)
        return torch.from_numpy(out)

    def distance(self, images_a: torch.Tensor, images_b: torch.Tensor,
                 value_range: Tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
        """Euclidean descriptor distance ``[N]`` between image ``i`` of each batch (same person below 0.6)."""
        if images_a.shape != images_b.shape:
            raise ValueError(f"images_a {tuple(images_a.shape)} and images_b {tuple(images_b.shape)} must match")
        return (self.descriptors(images_a, value_range) - self.descriptors(images_b, value_range)).norm(dim=1)


def median_distance(meter: Optional[IdentityMeter], images_a: torch.Tensor, images_b: torch.Tensor,
                    value_range: Tuple[float, float] = (-1.0, 1.0)) -> float:
    """Median identity distance between two batches (NaN without a meter)."""
    if meter is None:
        return float("nan")
    return float(meter.distance(images_a, images_b, value_range).median())
