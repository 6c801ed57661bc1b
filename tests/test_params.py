"""params: the parameter layout and the rig components, defined once."""

from __future__ import annotations

import pytest
import torch

from stylerig_lite import params


def test_the_layout_covers_the_vector_without_gaps():
    stops = [s.stop for s in params.SLICES.values()]
    starts = [s.start for s in params.SLICES.values()]
    assert starts[0] == 0 and starts[1:] == stops[:-1] and stops[-1] == params.NUM_PARAMS == 196


def test_rig_components_and_the_light_alias():
    assert params.RIG_COMPONENTS == ("pose", "expression", "light")
    assert params.rig_component("illumination") == "light"
    assert params.rig_slice("pose") == slice(190, 193)  # the rotation, not the translation
    with pytest.raises(KeyError, match="unknown component 'hair'"):
        params.rig_component("hair")
    with pytest.raises(ValueError, match="'pose', 'expression', 'light'"):
        params.rig_component("hair")


def test_target_params_takes_only_the_component():
    p_w, p_v = torch.zeros(2, 196), torch.ones(2, 196)
    target = params.target_params(p_w, p_v, "light")
    assert target[:, params.SLICES["light"]].eq(1).all() and target.sum() == 2 * 27


def test_euler_round_trip():
    angles = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, -0.3]], dtype=torch.float64)
    assert torch.allclose(params.matrix_to_euler(params.euler_to_matrix(angles)), angles)


def test_modules_share_one_definition():
    from stylerig_lite import corpus, losses, morphable, reconstruction, rignet

    assert morphable.FaceParams is params.FaceParams and morphable.SLICES is params.SLICES
    assert all(m.NUM_LANDMARKS is params.NUM_LANDMARKS for m in (corpus, losses, reconstruction, rignet))
