"""Analysis-by-synthesis fitting (stylerig_lite.fitting) recovers known parameters of rendered faces.

Targets are full heads (eyes, teeth, eyelashes) rendered at 64 px on a grey background from
``sample_params`` with fixed seeds; their projected landmarks stand in for a landmark detector.
The thresholds come from measurements, not hopes: see ``test_fit_recovers_pose_light_and_expression``.
"""

from __future__ import annotations

import math

import pytest
import torch

from stylerig_lite import fitting, losses, morphable
from stylerig_lite.face_render import default_camera, render_face
from stylerig_lite.morphable import FaceParams
from stylerig_lite.shading import directional_gamma

SIZE = 64
SEEDS = (0, 5, 10)  # among the hardest of seeds 0-11 for the rotation (see the measurements below)
STEPS = 200


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Fit on one thread: the same floating-point sums on every machine, so the measured errors below
    reproduce exactly, and no OpenMP contention when the CPU is shared (a 64-px fit gains nothing from more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> morphable.FaceModel:
    return morphable.load_face_model(progress=False)


@pytest.fixture(scope="module")
def camera():
    return default_camera(SIZE)


def _targets(model, camera, seeds):
    true = FaceParams.from_vector(torch.cat([morphable.sample_params(1, seed=s).to_vector() for s in seeds]))
    return true, render_face(model, true, camera, background=0.5)


@pytest.fixture(scope="module")
def full_fit(model, camera):
    """One batched fit of three faces (a batch is fitted exactly like separate fits, see below)."""
    true, target = _targets(model, camera, SEEDS)
    result = fitting.fit(model, target.image, target.landmarks, camera, steps=STEPS)
    return true, target, result


def test_fit_recovers_pose_light_and_expression(model, camera, full_fit):
    """Known-answer test with measured thresholds.

    Measured with this configuration (64 px, 200 steps, default learning rates and weights, mean-face
    start, one thread) on ``sample_params`` seeds 0-11 in one batched fit, twice (before and after an
    unrelated change to the renderer's floating-point details: worst rotation 1.4°, then 1.7°), and on
    this test's batch of three (seeds 0, 5, 10: rotation 1.2°, 1.8°, 1.5°). Tiny numerical changes
    (another batch size, another renderer version) move each fit's end point along a flat valley by
    a few tenths of a degree, so the bounds need a margin. The ranges below cover all three runs:

    ====================  ==================  =============  ======================================
    error                 at the start        after the fit  asserted here
    ====================  ==================  =============  ======================================
    rotation (geodesic)   7.8°-26.4°          0.2°-1.8°      < 3° (and each of yaw, pitch, roll)
    landmarks (mean)      2.0-9.0 px          0.06-0.12 px   < 0.25 px
    translation in plane  0.4-1.9 cm          0.01-0.40 cm   < 0.75 cm
    shading pattern       3.7 %-16 %          0.5 %-1.8 %    < 3.5 % and < 0.5 x the start's
    expression (RMS mm)   0.6-7.3 mm          0.4-1.75 mm    < 2.5 mm and < 0.85 x the start's
    ====================  ==================  =============  ======================================

    Each absolute bound leaves a margin of 1.4-2x over the worst measured value. The ratio bounds
    say "clearly better than the start": the worst ratios were 0.35 for light and 0.72 for expression
    (seed 8, whose face is nearly neutral, so there is little to recover; the three seeds fitted here
    reach 0.60 at most). Seeds 0, 5 and 10 are among the four with the largest rotation errors.

    Why the residuals are not zero: the landmarks are matched to ~0.1 px, but a 2D landmark set
    does not pin down the 3D shape, and a slightly different nose or brow depth trades off against
    a fraction of a degree of pitch or yaw; the identity prior settles that trade-off, imperfectly.
    Not asserted: depth (tz), off by 0.1-5.7 cm, because a head nearer the camera looks like a
    larger identity; absolute light level and tint, which trade off exactly against the albedo
    (``shading_pattern`` divides them out); individual expression weights (a small blendshape
    moves the mesh by less than a pixel).
    """
    true, _, result = full_fit
    errors = fitting.parameter_errors(model, result.params, true, camera)
    start = fitting.parameter_errors(model, FaceParams.neutral(len(SEEDS)), true, camera)
    assert (start["rotation_deg"] > 5.0).all()  # the fit had something to do
    assert (errors["rotation_deg"] < 3.0).all(), errors["rotation_deg"]
    for angle in ("yaw_deg", "pitch_deg", "roll_deg"):
        assert (errors[angle] < 3.0).all(), (angle, errors[angle])
    assert (errors["landmarks_px"] < 0.25).all(), errors["landmarks_px"]
    assert (errors["translation_xy_cm"] < 0.75).all(), errors["translation_xy_cm"]
    assert (errors["shading_pattern"] < 0.035).all(), errors["shading_pattern"]
    assert (errors["shading_pattern"] < 0.5 * start["shading_pattern"]).all()
    assert (errors["expression_mm"] < 2.5).all(), errors["expression_mm"]
    assert (errors["expression_mm"] < 0.85 * start["expression_mm"]).all()
    # Expression weights stay in the blendshapes' valid range.
    assert result.params.expression.min() >= 0.0 and result.params.expression.max() <= 1.0


def test_fit_history_and_final_losses(full_fit):
    _, _, result = full_fit
    history = result.history
    assert result.steps == STEPS and all(len(v) == STEPS for v in history.values())
    coarse = int(round(0.3 * STEPS))
    assert history["stage"] == [0] * coarse + [1] * (STEPS - coarse)
    # The loss falls by more than an order of magnitude and ends near the floor set by what the
    # face-only model cannot explain (eyelashes and eyeballs over the face region: 0.008-0.022 at the
    # true parameters of seeds 0-7). Measured after the fit, seeds 0-11: 0.014-0.031.
    assert history["total"][-1] < 0.1 * history["total"][0]
    assert (result.final["photometric"] < 0.05).all()
    assert (result.final["landmark"] < (0.3 / SIZE) ** 2).all()
    for key in ("total", "photometric", "landmark", "regulariser"):
        assert result.final[key].shape == (len(SEEDS),) and torch.isfinite(result.final[key]).all()


def test_pose_only_fit_with_everything_else_known_is_nearly_exact(model, camera):
    """When only the pose is unknown, no shape trades off against it and even depth is observable.

    Measured on seed 3 (yaw 24°, pitch 8°, roll -7°): after 120 steps rotation 0.03°, depth 0.02 cm,
    landmarks 0.003 px (after 80 steps still 3.3°: rotation about the head's centre and sideways
    translation move the landmarks almost alike, a narrow valley for gradient descent).
    """
    true, target = _targets(model, camera, (3,))
    init = true.replace(pose=torch.zeros_like(true.pose))
    result = fitting.fit(model, target.image, target.landmarks, camera, steps=120, init=init, components=("pose",))
    errors = fitting.parameter_errors(model, result.params, true, camera)
    assert float(errors["rotation_deg"]) < 0.2
    assert float(errors["translation_xy_cm"]) < 0.05 and float(errors["depth_cm"]) < 0.2
    assert float(errors["landmarks_px"]) < 0.05
    # The components that were not optimised did not move.
    for name in ("identity", "expression", "albedo", "light"):
        assert torch.equal(result.params.component(name), init.component(name))


def test_batched_fit_equals_separate_fits(model, camera):
    """Losses are per image and Adam is element-wise, so a batch is B independent fits."""
    true, target = _targets(model, camera, (1, 2))
    kwargs = dict(steps=6, coarse_fraction=0.5)
    batched = fitting.fit(model, target.image, target.landmarks, camera, **kwargs).params.to_vector()
    for b in range(2):
        single = fitting.fit(model, target.image[b : b + 1], target.landmarks[b : b + 1], camera, **kwargs)
        assert torch.allclose(single.params.to_vector()[0], batched[b], atol=1e-5)


def test_fit_gradient_descent_lowers_the_loss_without_landmarks(model, camera):
    """Photometric only (no landmarks), starting near the truth: the loss still decreases."""
    true, target = _targets(model, camera, (4,))
    init = true.replace(light=true.light * 0.8, albedo=torch.zeros_like(true.albedo))
    result = fitting.fit(model, target.image, None, camera, steps=20, init=init, components=("light", "albedo"))
    assert result.history["total"][-1] < 0.5 * result.history["total"][0]
    assert torch.equal(result.final["landmark"], torch.zeros(1))


def test_parameter_errors_known_values(model, camera):
    true = morphable.sample_params(2, seed=0)
    zero = fitting.parameter_errors(model, true, true, camera)
    for key, value in zero.items():
        # Angles come from acos, whose float32 slope at 1 turns rounding into a few hundredths of a degree.
        assert torch.allclose(value, torch.zeros(2), atol=0.1 if key.endswith("_deg") else 1e-3), key
    moved = true.with_angles_deg(yaw=true.angles_deg[:, 0] + 10.0)
    pose = moved.pose.clone()
    pose[:, 3] += 3.0
    pose[:, 5] -= 2.0
    errors = fitting.parameter_errors(model, moved.replace(pose=pose), true, camera)
    assert torch.allclose(errors["yaw_deg"], torch.full((2,), 10.0), atol=1e-3)
    assert torch.allclose(errors["rotation_deg"], torch.full((2,), 10.0), atol=1e-2)
    assert torch.allclose(errors["translation_xy_cm"], torch.full((2,), 3.0), atol=1e-5)
    assert torch.allclose(errors["depth_cm"], torch.full((2,), 2.0), atol=1e-5)
    # Light: scaling all of it changes the absolute shading but not its pattern.
    brighter = true.replace(light=1.5 * true.light)
    errors = fitting.parameter_errors(model, brighter, true, camera)
    assert torch.allclose(errors["shading_rel"], torch.full((2,), 0.5), atol=1e-4)
    assert torch.allclose(errors["shading_pattern"], torch.zeros(2), atol=1e-5)
    assert torch.allclose(errors["light_direction_deg"], torch.zeros(2), atol=0.1)


def test_light_direction_of_a_directional_light():
    for direction in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.2], [-0.3, 0.4, 0.8]):
        d = torch.tensor(direction)
        got = fitting.light_direction(directional_gamma(d, 0.6, 0.4))[0]
        assert torch.allclose(got, d / d.norm(), atol=1e-5)


def test_rotation_error_is_symmetric_and_geodesic():
    a = torch.tensor([[0.3, -0.2, 0.1]])
    b = torch.tensor([[0.3, -0.2, 0.1 + math.radians(7.0)]])  # only roll differs: 7° about one axis
    assert torch.allclose(fitting.rotation_error_deg(a, b), torch.tensor([7.0]), atol=1e-3)
    assert torch.allclose(fitting.rotation_error_deg(a, b), fitting.rotation_error_deg(b, a), atol=1e-4)


def test_fit_input_errors_are_clear(model, camera):
    image = torch.zeros(1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fitting.fit(model, image, steps=0)
    with pytest.raises(KeyError, match="unknown parameter component"):
        fitting.fit(model, image, components=("shape",), steps=1)
    with pytest.raises(ValueError, match="init must be"):
        fitting.fit(model, image, init="mean", steps=1)
    with pytest.raises(ValueError, match="init has batch size 2"):
        fitting.fit(model, image, init=FaceParams.neutral(2), steps=1)
    with pytest.raises(ValueError, match="target_landmarks has shape"):
        fitting.fit(model, image, torch.zeros(1, 66, 2), steps=1)
    with pytest.raises(ValueError, match="coarse_fraction"):
        fitting.fit(model, image, coarse_fraction=1.0, steps=1)
    with pytest.raises(ValueError, match="target_image has shape"):
        fitting.fit(model, image[0], steps=1)
    assert losses.LOSS_PARTS == ("face",)
