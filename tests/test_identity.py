"""Identity distance: dlib's face descriptor, as the preservation measure of edits."""

from __future__ import annotations

import pytest
import torch

identity = pytest.importorskip("stylerig_lite.identity")
try:
    meter = identity.IdentityMeter()
except identity.IdentityError as error:  # pragma: no cover - CI installs dlib (requirements/ci.txt)
    pytest.skip(str(error), allow_module_level=True)


@pytest.fixture(scope="module")
def faces(ict_mirror):
    """8 FaceWorld portraits, and the same people and scenes turned by 15 degrees."""
    from stylerig_lite.world import FaceWorld

    world = FaceWorld()
    batch = world.sample(8, seed=5)
    turned = batch.params.with_angles_deg(yaw=torch.rad2deg(batch.params.pose[:, 0]) + 15)
    return batch.images, world.render(turned, batch.scene).images


def test_a_face_is_at_distance_zero_from_itself_and_the_distance_is_symmetric(faces):
    images, turned = faces
    assert float(meter.distance(images, images, (0.0, 1.0)).abs().max()) < 1e-6
    assert torch.allclose(meter.distance(images, turned, (0.0, 1.0)), meter.distance(turned, images, (0.0, 1.0)))


def test_the_same_person_turned_is_closer_than_another_person(faces):
    """Measured on 32 faces: 0.34 (same person, +15 deg) against 0.55 (another face), medians."""
    images, turned = faces
    same = meter.distance(images, turned, (0.0, 1.0)).median()
    other = meter.distance(images, images.roll(1, 0), (0.0, 1.0)).median()
    assert same < other


def test_bad_images_are_refused(faces):
    images, _ = faces
    with pytest.raises(ValueError, match="must match"):
        meter.distance(images[:2], images[:3], (0.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        meter.descriptors(torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="0..255"):
        meter.descriptors(images * 255, (0.0, 1.0))
    with pytest.raises(ValueError, match="images"):
        meter.descriptors(torch.zeros(3, 64, 64))
