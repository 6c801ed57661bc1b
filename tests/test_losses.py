"""Known-answer tests of the rendering loss L_render and its terms (stylerig_lite.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from stylerig_lite import losses, morphable
from stylerig_lite.face_render import default_camera, render_face
from stylerig_lite.morphable import FaceParams

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def model() -> morphable.FaceModel:
    return morphable.load_face_model(progress=False)


@pytest.fixture(scope="module")
def target(model):
    """Two rendered faces with known parameters, drawn like chapter 4's fitting targets."""
    params = morphable.sample_params(2, seed=3)
    out = render_face(model, params, default_camera(SIZE), background=0.5)
    return params, out


def _images(seed: int, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 8, 8, generator=g), torch.rand(batch, 3, 8, 8, generator=g)


# -- photometric ---------------------------------------------------------------


def test_photometric_perfect_prediction_is_exactly_zero_with_zero_gradient():
    image, _ = _images(0)
    rendered = image.clone().requires_grad_(True)
    loss = losses.photometric_loss(rendered, image, torch.ones(2, 1, 8, 8))
    assert torch.equal(loss, torch.zeros(2))
    loss.sum().backward()
    assert torch.equal(rendered.grad, torch.zeros_like(rendered))  # no NaN from sqrt at 0


@pytest.mark.parametrize("d", [0.1, 0.25, -0.3])
def test_photometric_constant_offset_known_values(d):
    image, _ = _images(1)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 1:7] = 1.0
    # Pixels outside the mask carry arbitrary garbage: they must not count.
    shifted = image + d * mask + 5.0 * (1 - mask)
    l21 = losses.photometric_loss(shifted, image, mask)
    assert torch.allclose(l21, torch.full((2,), abs(d) * math.sqrt(3.0)), atol=1e-6)
    sq = losses.photometric_loss(shifted, image, mask, squared=True)
    assert torch.allclose(sq, torch.full((2,), 3.0 * d * d), atol=1e-6)


def test_photometric_is_a_mask_weighted_mean():
    """Reference: a plain loop over masked pixels."""
    rendered, target = _images(2)
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5)) > 0.4).float()
    got = losses.photometric_loss(rendered, target, mask)
    for b in range(2):
        distances = [
            float((rendered[b, :, i, j] - target[b, :, i, j]).norm())
            for i in range(8)
            for j in range(8)
            if mask[b, 0, i, j] > 0
        ]
        assert got[b].item() == pytest.approx(sum(distances) / len(distances), rel=1e-5)


def test_photometric_empty_mask_gives_zero_not_nan():
    rendered, target = _images(3)
    rendered.requires_grad_(True)
    loss = losses.photometric_loss(rendered, target, torch.zeros(2, 1, 8, 8))
    assert torch.equal(loss, torch.zeros(2))
    loss.sum().backward()
    assert torch.isfinite(rendered.grad).all()


def test_photometric_shape_errors_are_clear():
    rendered, target = _images(4)
    with pytest.raises(ValueError, match="target has shape"):
        losses.photometric_loss(rendered, target[:, :, :4], torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="mask has shape"):
        losses.photometric_loss(rendered, target, torch.ones(2, 3, 8, 8))
    with pytest.raises(ValueError, match="rendered has shape"):
        losses.photometric_loss(rendered[0], target, torch.ones(2, 1, 8, 8))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        losses.photometric_loss(rendered.numpy(), target, torch.ones(2, 1, 8, 8))


# -- landmarks -----------------------------------------------------------------


def test_landmark_shift_of_k_pixels_known_value():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 68, 2, generator=g) * SIZE
    assert torch.equal(losses.landmark_loss(target, target, image_size=SIZE), torch.zeros(3))
    for k in (1.0, 2.5):
        # Shift along u, along v and diagonally by k pixels in total length.
        for direction in ([1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), -math.sqrt(0.5)]):
            pred = target + k * torch.tensor(direction)
            got = losses.landmark_loss(pred, target, image_size=SIZE)
            assert torch.allclose(got, torch.full((3,), (k / SIZE) ** 2), rtol=1e-4)
    # Resolution independence: the same relative shift on a 2x image gives the same value.
    assert torch.allclose(
        losses.landmark_loss(2 * target + 2.0, 2 * target, image_size=2 * SIZE),
        losses.landmark_loss(target + 1.0, target, image_size=SIZE),
    )
    # Non-square images divide u by W and v by H.
    got = losses.landmark_loss(target + torch.tensor([3.0, 4.0]), target, image_size=(40, 30))
    assert torch.allclose(got, torch.full((3,), (3 / 30) ** 2 + (4 / 40) ** 2))


def test_landmark_weights_select_groups_and_keep_uniform_shifts_invariant():
    target = torch.zeros(1, 68, 2)
    weights = losses.landmark_weights(mouth=3.0, jaw=0.0)
    assert weights[list(losses.LANDMARK_GROUPS["mouth"])].eq(3.0).all()
    assert weights[:17].eq(0.0).all() and weights[17:48].eq(1.0).all()
    uniform = losses.landmark_loss(target + 2.0, target, image_size=SIZE, weights=weights)
    assert torch.allclose(uniform, torch.tensor([2 * (2 / SIZE) ** 2]))
    # Only a mouth landmark moved: weighted mean = 3 * d² / sum(weights).
    pred = target.clone()
    pred[0, 60, 0] = 4.0
    got = losses.landmark_loss(pred, target, image_size=SIZE, weights=weights)
    assert got.item() == pytest.approx(3.0 * (4 / SIZE) ** 2 / float(weights.sum()))
    with pytest.raises(KeyError, match="unknown landmark group"):
        losses.landmark_weights(lips=2.0)
    with pytest.raises(ValueError, match="positive sum"):
        losses.landmark_loss(pred, target, image_size=SIZE, weights=torch.zeros(68))


def test_landmark_shape_errors_are_clear():
    pred = torch.zeros(2, 68, 2)
    with pytest.raises(ValueError, match="target landmarks has shape"):
        losses.landmark_loss(pred, torch.zeros(2, 66, 2), image_size=SIZE)
    with pytest.raises(ValueError, match="pred landmarks has shape"):
        losses.landmark_loss(torch.zeros(2, 68, 3), pred, image_size=SIZE)
    with pytest.raises(ValueError, match="landmark weights has shape"):
        losses.landmark_loss(pred, pred, image_size=SIZE, weights=torch.ones(66))
    with pytest.raises(ValueError, match="image_size must be positive"):
        losses.landmark_loss(pred, pred, image_size=0)


# -- regulariser ---------------------------------------------------------------


def test_parameter_regulariser_known_value_and_weights():
    params = FaceParams.neutral(2)
    assert torch.equal(losses.parameter_regulariser(params), torch.zeros(2))
    params.identity[0, :4] = 2.0  # Σα² = 16
    params.expression[1, 0] = 0.5  # Σβ² = 0.25
    params.albedo[1, :] = 1.0  # Σδ² = 10
    w = losses.DEFAULT_REGULARISATION
    got = losses.parameter_regulariser(params)
    assert got[0].item() == pytest.approx(16 * w["identity"])
    assert got[1].item() == pytest.approx(0.25 * w["expression"] + 10 * w["albedo"])
    only_identity = losses.parameter_regulariser(params, {"identity": 1.0, "expression": 0.0, "albedo": 0.0})
    assert torch.allclose(only_identity, torch.tensor([16.0, 0.0]))
    with pytest.raises(KeyError, match="unknown parameter component"):
        losses.parameter_regulariser(params, {"shape": 1.0})


# -- L_render on real renders ---------------------------------------------------


def test_cropped_model_renders_the_same_face(model, target):
    params, _ = target
    cropped = losses.crop_face_model(model)
    assert cropped.num_vertices == 9409 and cropped.faces.shape[0] == int(model.face_mask(["face"]).sum())
    full = render_face(model, params, default_camera(SIZE), parts=["face"])
    small = render_face(cropped, params, default_camera(SIZE), parts=["face"])
    assert torch.equal(full.mask, small.mask)
    assert torch.equal(full.landmarks, small.landmarks)
    assert torch.allclose(full.image, small.image, atol=1e-5)


def test_render_loss_is_zero_for_the_true_parameters(model, target):
    """A perfect prediction: the target is rendered exactly as the loss renders (the face region, through
    the cropped model), so both terms vanish exactly."""
    params, _ = target
    cropped = losses.crop_face_model(model)
    face_only = render_face(cropped, params, default_camera(SIZE), parts=losses.LOSS_PARTS, background=0.5)
    terms = losses.render_loss(model, params, face_only.image, face_only.landmarks)
    assert torch.equal(terms.photometric, torch.zeros(2))
    assert torch.equal(terms.landmark, torch.zeros(2))
    assert torch.equal(terms.total, torch.zeros(2))


def test_render_loss_on_a_full_head_target_compares_only_the_face_mask(model, target):
    """Against the full head (eyes, teeth, eyelashes) the true parameters leave only a small residual:
    the pixels where eyelashes or eyeballs cover the face region's mask."""
    params, out = target
    terms = losses.render_loss(model, params, out.image, out.landmarks)
    assert torch.equal(terms.landmark, torch.zeros(2))
    assert (terms.photometric < 0.03).all()  # measured 0.012 and 0.016: a residual, not a misfit
    # The mask is the rendered face region, not the whole head.
    assert (terms.render.mask.sum(dim=(1, 2, 3)) < out.mask.sum(dim=(1, 2, 3))).all()
    assert set(terms.render.part_index.unique().tolist()) == {-1, morphable.PART_NAMES.index("face")}


def test_render_loss_gradient_reaches_every_component(model, target):
    params, out = target
    wrong = params.to_vector().clone()
    wrong[:, morphable.SLICES["pose"]] += torch.tensor([0.05, -0.04, 0.03, 0.5, -0.5, 1.0])
    wrong[:, morphable.SLICES["light"]] *= 0.9
    wrong[:, morphable.SLICES["expression"]] += 0.05
    wrong[:, morphable.SLICES["identity"]] += 0.3
    wrong[:, morphable.SLICES["albedo"]] -= 0.3
    wrong.requires_grad_(True)
    terms = losses.render_loss(model, wrong, out.image, out.landmarks)
    assert (terms.photometric > 0).all() and (terms.landmark > 0).all()
    (terms.total.sum() + losses.parameter_regulariser(wrong).sum()).backward()
    assert torch.isfinite(wrong.grad).all()
    for name, s in morphable.SLICES.items():
        assert wrong.grad[:, s].abs().sum(dim=1).gt(0).all(), f"no gradient reaches {name}"


def test_render_loss_landmark_term_matches_a_known_shift(model, target):
    """Shifting the target landmarks by k pixels gives w_land·(k/S)² on top of a zero photometric term."""
    params, _ = target
    face_only = render_face(model, params, default_camera(SIZE), parts=losses.LOSS_PARTS)
    k = 3.0
    loss = losses.RenderLoss(model, default_camera(SIZE), w_land=10.0)
    terms = loss(params, face_only.image, face_only.landmarks + torch.tensor([k, 0.0]))
    assert torch.allclose(terms.landmark, torch.full((2,), (k / SIZE) ** 2), rtol=1e-5)
    assert torch.allclose(terms.total, 10.0 * terms.landmark)
    no_landmarks = loss(params, face_only.image, None)
    assert torch.equal(no_landmarks.landmark, torch.zeros(2))


def test_render_loss_input_errors_are_clear(model, target):
    params, out = target
    with pytest.raises(ValueError, match="camera renders 32x32"):
        losses.render_loss(model, params, out.image, out.landmarks, default_camera(32))
    with pytest.raises(ValueError, match="batch size 1"):
        losses.render_loss(model, params[0], out.image, out.landmarks)
    with pytest.raises(ValueError, match="target_landmarks has shape"):
        losses.render_loss(model, params, out.image, out.landmarks[:, :66])
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        losses.RenderLoss(model, w_land=-1.0)


def test_decimated_face_keeps_landmarks_and_nearly_the_same_picture(model):
    from stylerig_lite.face_render import default_camera, render_face

    crop = losses.crop_face_model(model)
    coarse = losses.decimate_face_model(crop)
    assert coarse.num_vertices < crop.num_vertices / 3 and coarse.faces.shape[0] < crop.faces.shape[0] / 3
    # every kept vertex is an original one: its neutral position and bases are the original's
    params = morphable.sample_params(8, seed=4)
    params.expression[:, morphable.expression_index("jawOpen")] = torch.linspace(0, 1, 8)  # open mouths too
    full = render_face(crop, params, default_camera(64), parts=("face",))
    small = render_face(coarse, params, default_camera(64), parts=("face",))
    torch.testing.assert_close(small.landmarks, full.landmarks)  # identical landmarks
    a, b = full.mask > 0, small.mask > 0
    assert float((a & b).sum() / (a | b).sum()) > 0.96  # the documented figure is 0.979
    both = (a & b).float()
    assert float(((full.image - small.image).abs() * both).sum() / (3 * both.sum())) * 255 < 4.0
    # the lips stay apart: an open mouth leaves a hole in the face mask in both meshes
    jaw = morphable.FaceParams.neutral(1)
    jaw.expression[:, morphable.expression_index("jawOpen")] = 1.0
    holes = [render_face(m, jaw, default_camera(64), parts=("face",)).mask[0, 0, 36:44, 28:36].sum()
             for m in (crop, coarse)]
    assert holes[1] <= holes[0] + 4  # no more covered pixels inside the mouth than the full mesh
    with pytest.raises(ValueError, match="cell_cm"):
        losses.decimate_face_model(crop, 0.0)
    # the loss with the decimated mesh: same landmark term, a nearby photometric term
    image, landmarks = full.image.detach(), full.landmarks.detach()
    exact = losses.render_loss(model, params, image, landmarks)
    approx = losses.render_loss(model, params, image, landmarks, mesh_cell_cm=losses.DEFAULT_CELL_CM)
    torch.testing.assert_close(approx.landmark, exact.landmark)
    assert float(approx.photometric.max()) < 0.05
