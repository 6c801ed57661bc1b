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
