"""Chapters 3 and 4's figure and table helpers: they draw what they are given, where it belongs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from stylerig_lite import evaluate, plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image(size: int = 8) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))


def test_rasterization_figure_marks_the_winning_triangles_and_the_barycentrics() -> None:
    uv = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    face_index = torch.full((8, 8), -1)
    face_index[:4, :4], face_index[4:, 4:] = 0, 1
    fig = plotting.rasterization_figure(_image(), uv, faces, face_index, (1, 1),
                                        torch.tensor([0.6, 0.2, 0.2]))
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # one outline per triangle
    counts = sorted(len(c.get_offsets()) for c in ax.collections)
    assert counts == [1, 16, 16, 32]  # the star, each triangle's pixels, the background
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["$b_0$=0.60", "$b_1$=0.20", "$b_2$=0.20"]
    assert ax.get_xlim() == (0.0, 8.0) and ax.get_ylim() == (8.0, 0.0)  # v points down


def test_triangle_zoom_figure_outlines_the_winners_in_black() -> None:
    uv = torch.tensor([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0], [3.0, 3.0], [7.0, 7.0], [8.0, 7.0]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [3, 4, 5]])
    face_index = torch.full((8, 8), -1)
    face_index[1:3, 1:3] = 0
    fig = plotting.triangle_zoom_figure(_image(), uv, faces, face_index, slice(0, 4), slice(0, 4))
    left, zoom = fig.axes
    assert len(left.patches) == 1  # the window's rectangle
    edges = [p.get_edgecolor()[:3] for p in zoom.patches]
    assert len(edges) == 3  # two triangles near the window (grey), the one that wins a pixel again (black)
    assert edges.count((0.0, 0.0, 0.0)) == 1
    assert zoom.get_xlim() == (0.0, 4.0) and zoom.get_ylim() == (4.0, 0.0)
    assert len(zoom.collections[0].get_offsets()) == 16  # the window's pixel centres


def test_sh_basis_figure_lays_the_bands_out_as_a_pyramid() -> None:
    basis = torch.arange(9.0).expand(4, 4, 9) / 9
    fig = plotting.sh_basis_figure(basis, torch.ones(4, 4, dtype=torch.bool))
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert len(drawn) == 9 and len(fig.axes) == 15
    assert fig.axes[2].get_title().startswith("$Y_0$")  # band 0 in the middle of the first row
    assert fig.axes[14].get_title().startswith("$Y_8$")  # band 2, m = +2 in the last corner
    assert float(fig.axes[14].get_images()[0].get_array()[0, 0]) == pytest.approx(8 / 9)


def test_sphere_shading_figure_blanks_the_outside() -> None:
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 1:3] = True
    panels = [("a", torch.ones(4, 4), "gray", 0.0, 1.0), ("b", torch.zeros(4, 4), "RdBu_r", -1.0, 1.0)]
    fig = plotting.sphere_shading_figure(panels, inside)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"] and len(fig.axes) == 3  # + colour bar
    shown = np.asarray(fig.axes[0].get_images()[0].get_array().filled(np.nan))
    assert np.isnan(shown[0, 0]) and shown[1, 1] == 1.0


def test_loss_sweep_figure_draws_the_tangent_and_the_mask_area() -> None:
    offsets = torch.linspace(-1, 1, 5)
    fig = plotting.loss_sweep_figure([("wide", offsets, offsets**2 + 1), ("zoom", offsets, offsets + 1)],
                                     1.0, 0.5, area=(offsets, torch.tensor([3, 3, 4, 4, 5])))
    assert len(fig.axes) == 3  # two panels and the area's right-hand axis
    tangent = fig.axes[0].lines[1].get_ydata()
    np.testing.assert_allclose(tangent, 1.0 + 0.5 * offsets.numpy())
    assert fig.axes[2].get_ylabel() == "face-mask pixels"
    assert "degrees" in fig.axes[0].get_xlabel()


def test_images_with_difference_scales_the_map() -> None:
    difference = torch.zeros(8, 8)
    difference[2, 3] = 0.1
    fig = plotting.images_with_difference([_image(), _image()], ["a", "b"], difference, difference_title="d",
                                          landmarks=[torch.full((68, 2), 4.0)] * 2)
    axes = fig.axes
    assert [ax.get_title() for ax in axes[:3]] == ["a", "b", "d"] and len(axes) == 4  # + colour bar
    assert axes[2].get_images()[0].get_clim() == (0.0, pytest.approx(0.1))
    assert len(axes[0].collections) == 1  # the landmarks
    fig = plotting.images_with_difference([_image()], ["a"], difference, difference_title="d", vmax=0.2)
    assert fig.axes[1].get_images()[0].get_clim() == (0.0, 0.2)


def test_fit_history_figure_skips_zeros_and_marks_the_stage_switch() -> None:
    history = {"total": [1.0, 0.5, 0.2, 0.1], "photometric": [0.5, 0.3, 0.1, 0.05],
               "landmark": [0.1, 0.05, 0.01, 0.005], "regulariser": [0.0, 0.0, 0.01, 0.02], "stage": [0, 0, 1, 1]}
    fig = plotting.fit_history_figure(history)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines[:4]] == list(plotting.FIT_CURVES.values())
    assert np.isnan(ax.lines[3].get_ydata()[:2]).all()  # the prior is 0 before the shape moves
    assert ax.lines[4].get_xdata()[0] == 2  # the dashed line at the first step of stage 1
    assert ax.get_yscale() == "log"


def test_estimate_scatter_figure_reports_the_correlation() -> None:
    truth = torch.stack([torch.arange(10.0), torch.arange(10.0)], dim=1)
    estimate = torch.stack([2 * torch.arange(10.0), -torch.arange(10.0)], dim=1)
    fig = plotting.estimate_scatter_figure(truth, estimate, ["a (°)", "b"])
    assert [ax.get_title() for ax in fig.axes] == ["a (°)\nr = 1.00", "b\nr = -1.00"]
    assert fig.axes[0].get_ylabel() == "F's estimate"
    np.testing.assert_allclose(fig.axes[1].collections[0].get_offsets()[:, 1], -np.arange(10.0))


def test_estimator_table_rows_follow_the_first_column() -> None:
    keys = [key for key, _, _ in evaluate.ESTIMATOR_ROWS]
    full = {key: 1.0 for key in keys}
    table = evaluate.estimator_table({"F": full, "chance": {**full, "yaw_deg_median": 12.345}}, "128 images")
    lines = table.splitlines()
    assert len(lines) == 1 + len(keys)
    assert lines[0].startswith("128 images") and lines[0].split()[-2:] == ["F", "chance"]
    assert lines[1].startswith("yaw error, median (°)") and lines[1].split()[-2:] == ["1.00", "12.35"]
    partial = evaluate.estimator_table({"F vs E": {"yaw_deg_median": 0.5, "light_rmse": math.pi}, "F": full})
    assert [line.split()[-2:] for line in partial.splitlines()[1:]] == [["0.50", "1.00"], ["3.142", "1.000"]]
    assert "-" in evaluate.estimator_table({"a": {"light_rmse": 1.0}, "b": {}}).splitlines()[1].split()
