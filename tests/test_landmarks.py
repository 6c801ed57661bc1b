"""Sparse landmarks for the latent F: dlib's 68 iBUG points, checked against FaceWorld's exact ICT landmarks.

Measured by ``landmarks.landmark_error()`` (256 renders of seed 40000, at 64 px): median error on the
non-contour points (brows, nose, eyes, mouth) 0.95 px, contour 1.64 px; 255 of 256 faces found. On this
file's 32 renders (seed 7): non-contour 1.01 px, contour 1.77 px, 32 of 32 found (one of them a false box
with score -0.70 and a 30 px error: the median is robust to it, and consumers should filter by confidence).

The goal, 1.5 px on the non-contour points at 64 px, is about 0.14 of FaceWorld's inter-ocular distance
(eye centres ~10.9 px apart): the detector's own noise, which F cannot be asked to beat. It sits 50% above
the measured 1.0 px because 32 faces give a noisy median and a detector regression of that size (e.g. a
half-pixel convention slip, a wrong upsampling scale) would move it by at least 0.5 px.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

landmarks = pytest.importorskip("stylerig_lite.landmarks")
try:
    detector = landmarks.LandmarkDetector()
except landmarks.LandmarkError as error:  # pragma: no cover - CI installs dlib (requirements/ci.txt)
    pytest.skip(str(error), allow_module_level=True)

NON_CONTOUR = list(landmarks.BROWS + landmarks.NOSE + landmarks.EYES + landmarks.MOUTH)


@pytest.fixture(scope="module")
def faces(ict_mirror):
    """32 FaceWorld renders (64 px, values in [0, 1]), their exact landmarks and dlib's detections."""
    from stylerig_lite.world import FaceWorld

    batch = FaceWorld().sample(32, seed=7)
    return batch.images, batch.landmarks, detector.detect(batch.images, (0.0, 1.0))


def test_the_groups_cover_the_68_points_and_the_sparse_sets_are_subsets():
    groups = [i for g in landmarks.GROUPS.values() for i in g]
    assert sorted(groups) == list(range(68))
    assert len(landmarks.SPARSE_66) == 66 and 60 not in landmarks.SPARSE_66 and 64 not in landmarks.SPARSE_66
    assert set(landmarks.RIGID) == set(range(17, 48))
    assert sorted(landmarks.ICT_CORRESPONDENCE) == list(range(68))


def test_detections_have_the_documented_shapes_and_types(faces):
    images, _, found = faces
    assert found.points.shape == (32, 68, 2) and found.points.dtype == torch.float32
    assert found.confidence.shape == (32,) and found.found.shape == (32,) and found.found.dtype == torch.bool
    assert len(found) == 32


def test_almost_every_faceworld_face_is_found(faces):
    """Measured: 32 of 32 here, 255 of 256 on the measurement set."""
    _, _, found = faces
    assert float(found.found.float().mean()) >= 0.9
    assert torch.isfinite(found.points[found.found]).all()
    assert torch.isfinite(found.confidence[found.found]).all()  # all found by the first pass here


def test_detections_match_the_projected_ict_landmarks_in_ibug_order(faces):
    """Median non-contour error 1.01 px measured (0.95 px on 256 faces); the goal is 1.5 px at 64 px."""
    _, exact, found = faces
    errors = (found.points - exact[:, list(landmarks.ICT_CORRESPONDENCE)]).norm(dim=-1)[found.found]
    assert float(errors[:, NON_CONTOUR].median()) < 1.5
    # the order is iBUG's: each point's nearest exact landmark is itself for almost all points
    distance = (found.points[found.found][:, :, None] - exact[found.found][:, None]).norm(dim=-1).median(0).values
    assert int((distance.argmin(1) == torch.arange(68)).sum()) >= 60


def test_points_are_in_input_image_pixels(faces):
    """The same faces at 64 and 128 px: points scale by 2 (measured median 0.25 px, dlib's integer points)."""
    images, _, small = faces
    large = detector.detect(nnf.interpolate(images, size=(128, 128), mode="bicubic", align_corners=False).clamp(0, 1),
                            (0.0, 1.0))
    both = small.found & large.found
    assert int(both.sum()) >= 28
    assert float((large.points[both] / 2 - small.points[both]).norm(dim=-1).median()) < 0.5


def test_a_blank_image_is_recorded_as_not_found():
    out = detector.detect(torch.zeros(2, 3, 64, 64))  # grey in the default [-1, 1] range
    assert not out.found.any()
    assert torch.isnan(out.points).all() and torch.isnan(out.confidence).all()


def test_bad_images_are_refused(faces):
    images, _, _ = faces
    with pytest.raises(ValueError, match="NaN"):
        detector.detect(torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="0..255"):
        detector.detect(images[:1] * 255, (0.0, 1.0))
    with pytest.raises(ValueError, match="images"):
        detector.detect(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="images"):
        detector.detect(torch.zeros(1, 1, 64, 64))
