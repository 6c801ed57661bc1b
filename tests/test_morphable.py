"""Known-answer tests of the ICT morphable model against the real upstream OBJ files."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stylerig_lite import morphable as m
from stylerig_lite.morphable import FaceParams


@pytest.fixture(scope="module")
def model() -> m.FaceModel:
    return m.load_face_model(progress=False)


@pytest.fixture(scope="module")
def ict_dir(ict_mirror) -> Path:
    return ict_mirror / "FaceXModel"


def _upstream_vertices(ict_dir: Path, name: str) -> np.ndarray:
    path = ict_dir / f"{name}.obj.gz"
    if not path.exists():
        path = ict_dir / f"{name}.obj"
    return m.read_obj(path)


# -- layout --------------------------------------------------------------------


def test_layout_slices_cover_the_vector_exactly():
    assert m.NUM_PARAMS == 100 + 53 + 10 + 27 + 6 == 196
    covered = np.zeros(m.NUM_PARAMS, dtype=int)
    for s in m.SLICES.values():
        covered[s] += 1
    assert (covered == 1).all()


def test_face_params_round_trip_and_named_access():
    vector = torch.randn(4, m.NUM_PARAMS, generator=torch.Generator().manual_seed(0))
    params = FaceParams.from_vector(vector)
    assert torch.equal(params.to_vector(), vector)
    assert torch.equal(params.pose, vector[:, -6:])
    assert torch.equal(params.expression_weight("jawOpen"), vector[:, 100 + m.EXPRESSION_NAMES.index("jawOpen")])
    edited = params.with_expression(jawOpen=0.5).with_angles_deg(yaw=30.0)
    assert torch.allclose(edited.expression_weight("jawOpen"), torch.full((4,), 0.5))
    assert torch.allclose(edited.angles_deg[:, 0], torch.full((4,), 30.0))
    # Only the edited entries changed.
    assert torch.equal(edited.identity, params.identity) and torch.equal(edited.light, params.light)
    other = FaceParams.from_vector(torch.zeros(4, m.NUM_PARAMS))
    swapped = params.replace(pose=other.pose)
    assert torch.equal(swapped.pose, other.pose) and torch.equal(swapped.identity, params.identity)


def test_unknown_names_and_bad_shapes_give_clear_errors():
    params = FaceParams.neutral(2)
    with pytest.raises(KeyError, match="unknown parameter component 'posee'"):
        params.component("posee")
    with pytest.raises(KeyError, match="did you mean"):
        params.with_expression(jawopen=1.0)
    with pytest.raises(ValueError, match=r"expected \(\*, 196\)"):
        FaceParams.from_vector(torch.zeros(2, 195))
    with pytest.raises(ValueError, match="FaceParams.expression"):
        FaceParams(torch.zeros(2, 100), torch.zeros(3, 53), torch.zeros(2, 10), torch.zeros(2, 27), torch.zeros(2, 6))


def test_sampling_is_seeded_and_plausible():
    a = m.sample_params(64, seed=3)
    b = m.sample_params(64, seed=3)
    c = m.sample_params(64, seed=4)
    assert torch.equal(a.to_vector(), b.to_vector())
    assert not torch.equal(a.to_vector(), c.to_vector())
    d = m.ParamDistribution()
    assert (a.expression >= 0).all() and (a.expression <= d.expression_max).all()
    angles = a.angles_deg
    assert (angles[:, 0].abs() <= d.yaw_deg).all() and (angles[:, 2].abs() <= d.roll_deg).all()
    assert angles[:, 0].std() > d.yaw_deg / 3  # roughly uniform, not collapsed


# -- rotations -------------------------------------------------------------------


def test_rotation_conventions_by_hand():
    nose = torch.tensor([[0.0, 0.0, 1.0]])
    def turn(yaw=0.0, pitch=0.0, roll=0.0):
        r = m.euler_to_matrix(torch.tensor([[math.radians(yaw), math.radians(pitch), math.radians(roll)]]))
        return (r[0] @ nose[0]).numpy()
    # Yaw 90°: the nose points to +x (image right).
    np.testing.assert_allclose(turn(yaw=90), [1, 0, 0], atol=1e-6)
    # Pitch 90°: the nose points down.
    np.testing.assert_allclose(turn(pitch=90), [0, -1, 0], atol=1e-6)
    # Roll 90°: +x goes to +y (counter-clockwise as the camera sees it).
    r = m.euler_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]]))[0]
    np.testing.assert_allclose((r @ torch.tensor([1.0, 0.0, 0.0])).numpy(), [0, 1, 0], atol=1e-6)


def test_matrix_to_euler_inverts_euler_to_matrix():
    angles = (torch.rand(100, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * torch.tensor([3.0, 2.8, 3.0])
    matrices = m.euler_to_matrix(angles)
    assert torch.allclose(matrices @ matrices.transpose(1, 2), torch.eye(3).expand(100, 3, 3), atol=1e-5)
    assert torch.allclose(m.matrix_to_euler(matrices), angles, atol=1e-4)


# -- known answers against upstream files ----------------------------------------


@pytest.mark.parametrize("k", [0, 7, 99])
def test_identity_mode_reproduces_upstream_obj(model, ict_dir, k):
    params = FaceParams.neutral(1)
    params.identity[0, k] = 1.0
    vertices = model.shape(params.identity, params.expression)[0].double().numpy()
    expected = _upstream_vertices(ict_dir, f"identity{k:03d}")
    np.testing.assert_allclose(vertices, expected, rtol=0, atol=2e-5)  # float32 of values up to ~20 cm


@pytest.mark.parametrize("name", ["jawOpen", "eyeBlink_L", "mouthSmile_R", "browInnerUp_L"])
def test_expression_weight_one_reproduces_upstream_obj(model, ict_dir, name):
    params = FaceParams.neutral(1).with_expression(**{name: 1.0})
    vertices = model.shape(params.identity, params.expression)[0].double().numpy()
    np.testing.assert_allclose(vertices, _upstream_vertices(ict_dir, name), rtol=0, atol=2e-5)


def test_neutral_parameters_give_the_neutral_mesh(model, ict_dir):
    geometry = model(FaceParams.neutral(1))
    np.testing.assert_allclose(geometry.vertices[0].double().numpy(), _upstream_vertices(ict_dir, "generic_neutral_mesh"), atol=1e-5)


def test_rotation_moves_landmarks_as_computed_by_hand(model):
    neutral = model(FaceParams.neutral(1)).landmarks[0]  # [68, 3]
    params = FaceParams.neutral(1).with_angles_deg(yaw=30.0)
    params.pose[0, 3:] = torch.tensor([1.0, -2.0, 3.0])
    moved = model(params).landmarks[0]
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    x, y, z = neutral.unbind(-1)
    by_hand = torch.stack([c * x + s * z + 1.0, y - 2.0, -s * x + c * z + 3.0], dim=-1)
    assert torch.allclose(moved, by_hand, atol=1e-4)
    # The nose tip (landmark 30) moves toward +x under positive yaw.
    assert moved[30, 0] > neutral[30, 0] + 5.0


def test_landmarks_are_the_upstream_indices_and_symmetric(model):
    lm = model(FaceParams.neutral(1)).landmarks[0]
    assert lm.shape == (68, 3)
    # Jaw contour: landmark 0 mirrors landmark 16 across x = 0 on the symmetric neutral head.
    assert torch.allclose(lm[0] * torch.tensor([-1.0, 1.0, 1.0]), lm[16], atol=0.05)
    assert lm[30, 2] == lm[:, 2].max()  # the nose tip is the most forward landmark


def test_gradients_flow_to_every_parameter_group(model):
    params = m.sample_params(2, seed=0)
    vector = params.to_vector().clone().requires_grad_(True)
    geometry = model(vector)
    loss = geometry.vertices.square().mean() + geometry.albedo.mean() + geometry.light.square().mean()
    loss.backward()
    for name, s in m.SLICES.items():
        assert vector.grad[:, s].abs().sum() > 0, f"no gradient reaches {name}"


def test_albedo_model_is_bounded_and_regional(model):
    colour = model.colour(torch.zeros(1, m.NUM_ALBEDO))[0]
    assert (colour >= 0).all() and (colour <= 1).all()
    # Increasing lip colour changes the lips but not the forehead or the teeth.
    lips = m.ALBEDO_COMPONENTS.index(next(c for c in m.ALBEDO_COMPONENTS if c[0] == "lip_colour"))
    delta = torch.zeros(1, m.NUM_ALBEDO)
    delta[0, lips] = 2.0
    change = (model.colour(delta)[0] - colour).abs().sum(-1)
    lm = model.landmark_indices
    assert change[lm[51]] > 0.05 and change[lm[57]] > 0.05  # upper and lower lip
    teeth = torch.arange(*m.VERTEX_RANGES["teeth"])
    assert change[teeth].max() == 0
    forehead = (model.neutral[:, 1] > 8) & (model.vertex_part == model.part_id("face"))
    assert change[forehead].max() < 1e-3


# -- parts ----------------------------------------------------------------------


def test_vertex_ranges_match_the_mesh_materials(model):
    arrays_material = None
    # The converted cache keeps each triangle's upstream material.
    path = m._cache_path()
    with np.load(path) as data:
        arrays_material = data["face_material"]
    faces = model.faces.numpy()
    def used(material):
        return np.unique(faces[arrays_material == material])
    for material, fine in [("M_Face", "face"), ("M_GumsTongue", "gums_tongue"), ("M_Teeth", "teeth"),
                           ("M_LacrimalFluid", "lacrimal_fluid"), ("M_EyeBlend", "eye_blend"),
                           ("M_EyeOcclusion", "eye_occlusion"), ("M_EyeLashes", "eyelashes")]:
        lo, hi = m.VERTEX_RANGES[fine]
        verts = used(material)
        assert verts.min() >= lo and verts.max() <= hi, (material, verts.min(), verts.max(), lo, hi)
    eyes = np.concatenate([used("M_ScleraLeft"), used("M_IrisLeft")])
    assert eyes.min() == m.VERTEX_RANGES["eyeball_left"][0] and eyes.max() == m.VERTEX_RANGES["eyeball_left"][1]
    assert model.faces.shape == (52220, 3)
    assert model.faces.max() == m.NUM_VERTICES - 1


def test_faces_of_selects_parts(model):
    face_only = model.faces_of(["face"])
    assert 9000 < face_only.max() + 1 <= 9409
    with pytest.raises(KeyError, match="unknown part 'hair'"):
        model.faces_of(["hair"])


# -- bad input and broken assets -------------------------------------------------


def test_model_rejects_bad_input(model):
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, m.NUM_PARAMS), float("nan")))
    with pytest.raises(ValueError, match="196"):
        model(torch.zeros(1, 10))
    with pytest.raises(TypeError, match="FaceParams"):
        model([0.0] * m.NUM_PARAMS)


def test_missing_and_corrupt_assets_give_clear_errors(tmp_path, ict_dir):
    with pytest.raises(FileNotFoundError, match="ICT-FaceKit folder not found"):
        m.load_face_model(tmp_path / "nowhere", progress=False)
    # A folder with every file but one identity mode.
    folder = tmp_path / "ict"
    folder.mkdir()
    for src in ict_dir.iterdir():
        if src.name != "identity000.obj.gz":
            (folder / src.name).symlink_to(src)
    with pytest.raises(FileNotFoundError, match="identity000"):
        m.convert_ict(folder, progress=False)
    # A truncated blendshape: the message names the file and the vertex count.
    with gzip.open(ict_dir / "identity000.obj.gz", "rt") as f:
        lines = f.read().splitlines()
    with open(folder / "identity000.obj", "w") as f:
        f.write("\n".join(lines[: len(lines) // 8]))
    with pytest.raises(ValueError, match=r"identity000.obj has \d+ vertices, expected 26719"):
        m.convert_ict(folder, progress=False)
    # A corrupt gzip file.
    (folder / "identity000.obj").unlink()
    (folder / "identity000.obj.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="corrupt"):
        m.convert_ict(folder, progress=False)
