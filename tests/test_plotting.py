"""Figure helpers (stylerig_lite.plotting): they draw what they are given, with the right layout."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from stylerig_lite.plotting import edit_grid, rignet_diagram, tradeoff_plot  # noqa: E402


def _images(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def test_edit_grid_layout_with_sources_and_headers() -> None:
    edited = _images(2, 4, 3, 8, 8)
    fig = edit_grid(edited, sources=_images(2, 3, 8, 8), headers=_images(4, 3, 6, 6),
                    column_labels=["a", "b", "c", "d"], row_labels=["x", "y"])
    try:
        axes = fig.axes
        assert len(axes) == 3 * 5  # one header row and one source column
        grid = [axes[i * 5:(i + 1) * 5] for i in range(3)]
        assert [ax.get_title() for ax in grid[0][1:]] == ["a", "b", "c", "d"]
        assert grid[1][0].get_ylabel() == "x" and grid[2][0].get_ylabel() == "y"
        assert grid[1][0].get_title() == "source"
        assert not grid[0][0].axison  # the empty corner
        # the edit of row 1, column 2 is drawn where it belongs
        shown = grid[2][3].get_images()[0].get_array()
        assert torch.allclose(torch.as_tensor(shown).float(), edited[1, 2].permute(1, 2, 0), atol=1e-6)
    finally:
        plt.close(fig)


def test_edit_grid_plain_and_errors() -> None:
    fig = edit_grid(_images(3, 2, 3, 8, 8))
    try:
        assert len(fig.axes) == 6
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="rows, columns"):
        edit_grid(_images(2, 3, 8, 8))
    with pytest.raises(ValueError, match="headers"):
        edit_grid(_images(2, 4, 3, 8, 8), headers=_images(3, 3, 8, 8))
    with pytest.raises(ValueError, match="column_labels"):
        edit_grid(_images(2, 4, 3, 8, 8), column_labels=["a"])


def test_tradeoff_plot_draws_each_curve_through_its_gains() -> None:
    def result(error: float, change: float) -> dict:
        return {"target_error": {"yaw_deg": error}, "preservation": {"outside_face_mae_255": change}}

    curves = {"linear": {2.0: result(3.8, 18.0), 1.0: result(4.7, 9.9)}, "rignet": {1.0: result(2.3, 11.0)}}
    ax = tradeoff_plot(curves)
    try:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["linear", "rignet"]
        assert list(lines[0].get_xdata()) == [9.9, 18.0] and list(lines[0].get_ydata()) == [4.7, 3.8]  # by gain
        assert sorted(t.get_text() for t in ax.texts) == ["x1", "x1", "x2"]
    finally:
        plt.close(ax.figure)
    with pytest.raises(KeyError, match="no preservation 'light_rmse'"):
        tradeoff_plot(curves, preservation="light_rmse")


@pytest.mark.parametrize("num_ws, shown", [(10, 3), (2, 3), (1, 1)])
def test_rignet_diagram_names_the_layers(num_ws: int, shown: int) -> None:
    fig = rignet_diagram(num_ws=num_ws, w_dim=256, latent_dim=32, param_dim=53, component="expression", shown_layers=shown)
    try:
        texts = " ".join(t.get_text() for t in fig.axes[0].texts)
        assert f"Enc$_{{{num_ws}}}$" in texts and "256 → 32" in texts and "85 → 256" in texts
        assert "P = 53" in texts and "frozen" in texts
    finally:
        plt.close(fig)


def test_slider_edits_figure_layout_and_content() -> None:
    """Rows: per sweep (yaw, jaw, light), one row per face; column titles on each sweep's first row.
    With the toy generator the yaw row's bright bar must move right as the asked yaw grows."""
    import matplotlib.pyplot as plt

    from editing_fakes import ToyEstimator, ToyGenerator, toy_rigs
    from stylerig_lite.editing import EditorState
    from stylerig_lite.plotting import SLIDER_SWEEPS, slider_edits_figure

    state = EditorState(ToyGenerator(), toy_rigs(), ToyEstimator(), None, seed=3)
    fig = slider_edits_figure(seeds=(3, 5), state=state)
    axes = fig.axes
    columns = len(SLIDER_SWEEPS[0][1])
    assert len(axes) == 3 * 2 * columns
    assert [axes[i].get_title() for i in range(columns)] == ["yaw -30°", "yaw -15°", "yaw +0°", "yaw +15°", "yaw +30°"]
    assert axes[2 * columns].get_title() == "jaw 0.00" and axes[columns].get_title() == ""
    assert [axes[r * columns].get_ylabel() for r in range(6)] == ["seed 3", "seed 5"] * 3
    bar_columns = [np.asarray(ax.images[0].get_array())[..., 0].mean(0).argmax() for ax in axes[:columns]]
    assert bar_columns == sorted(bar_columns) and bar_columns[0] < bar_columns[-1]
    plt.close(fig)


def test_tradeoff_plot_labels_its_axes_in_words() -> None:
    from stylerig_lite.plotting import metric_label

    curves = {"rignet": {1.0: {"target_error": {"yaw_deg": 2.0}, "preservation": {"light_rmse": 0.1}}}}
    ax = tradeoff_plot(curves, preservation="light_rmse")
    try:
        assert ax.get_xlabel() == "collateral change: light change (SH coefficients, RMSE)"
        assert ax.get_ylabel() == "target error: yaw error (degrees)"
    finally:
        plt.close(ax.figure)
    assert metric_label("some_new_key") == "some new key"


def test_part_map_colours_the_parts_and_names_those_present() -> None:
    from stylerig_lite.plotting import part_map

    index = torch.full((6, 6), -1)
    index[1:3, 1:3], index[4, :] = 0, 3
    fig, ax = plt.subplots()
    try:
        part_map(ax, index, ("face", "head_neck", "mouth_interior", "teeth"))
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["face", "teeth"]
        shown = np.asarray(ax.get_images()[0].get_array())
        assert np.allclose(shown[0, 0], 1.0)  # the background is white
        assert not np.allclose(shown[1, 1], shown[4, 0])  # two parts, two colours
    finally:
        plt.close(fig)


class _ChannelGenerator:
    """W+ [B, 3, 1] -> images [B, 3, 4, 4] whose channel c is W+ row c: a mixed row shows in its channel."""

    num_ws, w_dim, img_resolution = 3, 1, 4

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        return ws[:, :, 0, None, None].expand(-1, -1, 4, 4).clone()


def test_style_mixing_figure_swaps_the_named_rows() -> None:
    from stylerig_lite.plotting import style_mixing_figure

    top = torch.tensor([[0.8, 0.8, 0.8], [0.4, 0.4, 0.4]])[..., None]  # [2, 3, 1]
    left = torch.tensor([[-0.6, -0.2, -1.0]])[..., None]  # [1, 3, 1]
    fig = style_mixing_figure(_ChannelGenerator(), top, left, {"first": [0], "rest": [1, 2]})
    try:
        axes = [fig.axes[i * 3:(i + 1) * 3] for i in range(3)]  # 1 + 1 * 2 rows, 2 + 1 columns
        assert len(fig.axes) == 9 and [row[0].get_ylabel() for row in axes[1:]] == ["first", "rest"]
        pixel = lambda ax: np.asarray(ax.get_images()[0].get_array())[0, 0]  # noqa: E731
        assert np.allclose(pixel(axes[1][2]), [0.7, 0.4, 0.0])  # row 0 from top face 1, the rest from the left
        assert np.allclose(pixel(axes[2][1]), [0.2, 0.9, 0.9])  # rows 1-2 from top face 0
        assert np.allclose(pixel(axes[1][0]), [0.2, 0.4, 0.0])  # the left face itself
    finally:
        plt.close(fig)


def test_edit_sweep_figure_edits_every_face_toward_every_target(ict_mirror) -> None:
    from editing_fakes import ToyGenerator, yaw_rig
    from stylerig_lite.morphable import FaceParams, load_face_model
    from stylerig_lite.plotting import edit_sweep_figure

    G = ToyGenerator()
    ws = G.mapping(torch.zeros(2, G.z_dim))
    yaws = [-30, 0, 30]
    targets = [FaceParams.neutral(2).with_angles_deg(yaw=y).to_vector() for y in yaws]
    fig, edited = edit_sweep_figure(G, yaw_rig, ws, targets, [f"yaw {y}" for y in yaws],
                                    load_face_model(progress=False), row_labels=["a", "b"], title="pose")
    try:
        assert edited.shape == (2, 3, 3, 32, 32)
        assert len(fig.axes) == 3 * 4 and fig._suptitle.get_text() == "pose"
        assert [ax.get_title() for ax in fig.axes[1:4]] == ["yaw -30", "yaw 0", "yaw 30"]
        assert fig.axes[1].get_ylabel() == "target (row 1)" and fig.axes[8].get_ylabel() == "b"
        bar = [int(edited[0, c, 0].mean(0).argmax()) for c in range(3)]  # the toy's bar moves right with yaw
        assert bar == sorted(bar) and bar[0] < bar[-1]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="column labels"):
        edit_sweep_figure(G, yaw_rig, ws, targets, ["one"], None)


def test_worst_edits_figure_labels_each_row_with_its_error(ict_mirror) -> None:
    from stylerig_lite.morphable import FaceParams, load_face_model
    from stylerig_lite.plotting import worst_edits_figure

    params = FaceParams.neutral(2).to_vector()
    worst = {"component": "pose", "error": torch.tensor([7.25, 3.5]), "source": _images(2, 3, 16, 16) * 2 - 1,
             "donor": _images(2, 3, 16, 16) * 2 - 1, "edited": _images(2, 3, 16, 16) * 2 - 1,
             "target": params, "estimated": params}
    fig = worst_edits_figure(worst, load_face_model(progress=False))
    try:
        assert len(fig.axes) == 2 * 5 and fig._suptitle.get_text() == "pose: worst edits"
        assert [ax.get_title() for ax in fig.axes[:5]] == ["face w", "donor v", "edit G(ŵ)", "target (3DMM)",
                                                            "E reads"]
        assert [fig.axes[5 * r].get_ylabel() for r in range(2)] == ["error 7.25°", "error 3.50°"]
    finally:
        plt.close(fig)


def test_rig_losses_figure_shows_the_three_terms(ict_mirror) -> None:
    """With an untrained RigNet (the identity) L_rec is exactly 0 and G(ŵ) is G(w)."""
    from stylerig_lite import pretrained, rignet
    from stylerig_lite.face_render import default_camera
    from stylerig_lite.losses import RenderLoss
    from stylerig_lite.morphable import load_face_model
    from stylerig_lite.plotting import rig_losses_figure

    G, F, face_model = pretrained.generator(), pretrained.face_estimator(), load_face_model(progress=False)
    z = G.sample_z(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ws = G.mapping(z)
    net = rignet.RigNet(rignet.RigNetConfig.for_generator(G, "pose"))
    fig = rig_losses_figure(net, G, F, RenderLoss(face_model, default_camera(F.config.image_size)), face_model,
                            ws[:1], ws[1:])
    try:
        assert len(fig.axes) == 10
        assert [ax.get_title() for ax in fig.axes[:3]] == ["I_w = G(w)", "I_v = G(v)", "G(ŵ), ŵ = RigNet(w, p_v)"]
        assert fig._suptitle.get_text().startswith("pose: L_rec 0   L_edit ")
        image = lambda k: np.asarray(fig.axes[k].get_images()[0].get_array())  # noqa: E731
        assert np.allclose(image(0), image(2))  # the untrained RigNet changes nothing
    finally:
        plt.close(fig)


def test_rignet_curves_draw_every_logged_term_and_overlay_a_second_run():
    from stylerig_lite import plotting

    history = [{"step": s, "loss": 1.0 / s, "edit": 0.5 / s, "consist": 0.4 / s, "rec": 0.01 * s,
                "target_error": 0.2 / s} for s in (10, 20, 30)]
    fig = plotting.rignet_curves(history, label="full run")
    render, rec, target = fig.axes
    assert [line.get_label() for line in render.lines] == ["full run: total", "full run: editing",
                                                            "full run: consistency"]
    assert list(rec.lines[0].get_ydata()) == [0.1, 0.2, 0.3] and list(target.lines[0].get_xdata()) == [10, 20, 30]
    assert all(ax.get_xlabel() == "training step" for ax in fig.axes)
    # A second run on the same axes; a log without some terms draws the rest.
    same = plotting.rignet_curves([{"step": 5, "loss": 2.0, "rec": 0.0}], fig=fig, label="demo", linestyle="--")
    assert same is fig and len(render.lines) == 4 and len(rec.lines) == 2 and len(target.lines) == 1
    with pytest.raises(ValueError, match="at least one"):
        plotting.rignet_curves([])
    plt.close(fig)
