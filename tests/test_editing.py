"""The interactive editor without a browser: state, sliders, transfer, coalescing, preview, book helpers.

Most tests use the toy generator/estimator/rigs of ``editing_fakes`` (yaw known exactly);
a few build the real package networks at their tiny sizes with random weights, and the
3DMM preview uses the ICT face model (skipped locally, failed in CI, without the mirror).
"""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from editing_fakes import JAW, ToyEstimator, ToyGenerator, toy_rigs, yaw_rig
from stylerig_lite import editing
from stylerig_lite.editing import EditorState, LatestOnly
from stylerig_lite.morphable import EXPRESSION_NAMES, FaceParams


@pytest.fixture()
def state() -> EditorState:
    return EditorState(ToyGenerator(), toy_rigs(), ToyEstimator(), None, seed=3)


@pytest.fixture(scope="module")
def face_model(ict_mirror):
    from stylerig_lite.morphable import load_face_model

    return load_face_model(progress=False)


def _same(a: FaceParams, b: FaceParams, component: str) -> bool:
    return torch.equal(a.component(component), b.component(component))


# ----------------------------------------------------------------------------------------- sliders
def test_yaw_slider_sets_pose_in_radians(state: EditorState) -> None:
    before = state.target_params()
    assert state.set_slider("yaw", 20.0) == 20.0
    after = state.target_params()
    assert after.pose[0, 0].item() == pytest.approx(math.radians(20.0))
    assert torch.equal(after.pose[:, 1:], before.pose[:, 1:])
    for component in ("identity", "expression", "albedo", "light"):
        assert _same(after, before, component)
    assert state.slider_value("yaw") == pytest.approx(20.0)
    assert state.message == ""


def test_expression_sliders_set_named_blendshapes(state: EditorState) -> None:
    state.set_slider("smile", 0.6)
    state.set_slider("jawOpen", 0.3)
    state.set_expression("cheekPuff_L", 0.4)
    target = state.target_params()
    for name, value in {"mouthSmile_L": 0.6, "mouthSmile_R": 0.6, "jawOpen": 0.3, "cheekPuff_L": 0.4}.items():
        assert target.expression[0, EXPRESSION_NAMES.index(name)].item() == pytest.approx(value)
    assert state.slider_value("smile") == pytest.approx(0.6)
    assert state.slider_value("cheekPuff_L") == pytest.approx(0.4)


def test_light_sliders_round_trip_through_sh() -> None:
    gamma = editing.light_to_gamma(30.0, 20.0, 0.7, 0.4)
    values = editing.gamma_to_light(gamma)
    assert values["light_azimuth"] == pytest.approx(30.0, abs=1e-3)
    assert values["light_elevation"] == pytest.approx(20.0, abs=1e-3)
    assert values["light_intensity"] == pytest.approx(0.7, abs=1e-4)
    assert values["light_ambient"] == pytest.approx(0.4, abs=1e-4)
    # +azimuth = light from image right (+x), +elevation = from above (+y).
    assert editing.light_direction(90, 0)[0] == pytest.approx(1.0)
    assert editing.light_direction(0, 90)[1] == pytest.approx(1.0)


def test_light_slider_changes_only_light(state: EditorState) -> None:
    before = state.target_params()
    state.set_slider("light_azimuth", 45.0)
    after = state.target_params()
    assert not _same(after, before, "light")
    assert all(_same(after, before, c) for c in ("identity", "expression", "albedo", "pose"))
    assert state.slider_value("light_azimuth") == pytest.approx(45.0)


def test_out_of_range_is_clamped_with_a_message(state: EditorState) -> None:
    assert state.set_slider("yaw", 95.0) == 60.0
    assert state.target_params().pose[0, 0].item() == pytest.approx(math.radians(60.0))
    assert "outside" in state.message and "clamped to 60" in state.message
    assert state.set_slider("jawOpen", -0.5) == 0.0
    assert "clamped to 0" in state.message
    state.set_slider("yaw", 10.0)
    assert state.message == ""  # a valid value clears the note
    with pytest.raises(ValueError, match="finite"):
        state.set_slider("yaw", float("nan"))


def test_unknown_names_list_the_valid_ones(state: EditorState) -> None:
    with pytest.raises(KeyError) as info:
        state.set_expression("jawOpn", 0.5)
    text = str(info.value)
    assert "jawOpen" in text and "Did you mean" in text and "mouthSmile_L" in text and "53" in text
    with pytest.raises(KeyError, match="yaw"):
        state.set_slider("yaww", 1.0)
    with pytest.raises(KeyError, match="illumination"):
        state.transfer("lighting", 5)
    with pytest.raises(KeyError, match="unknown rig component"):
        EditorState(ToyGenerator(), {"light": yaw_rig}, ToyEstimator())


# ---------------------------------------------------------------------------- reset and transfer
def test_reset_restores_the_source(state: EditorState) -> None:
    source = state.target_params()
    image = state.current_image()
    state.set_slider("yaw", 30.0)
    state.set_slider("blink", 1.0)
    state.set_slider("light_elevation", 40.0)
    assert not torch.equal(state.current_image(), image)
    state.reset()
    assert torch.equal(state.target_params().to_vector(), source.to_vector())
    assert torch.equal(state.current_image(), image)
    assert state.changed_components() == ()


@pytest.mark.parametrize("component, key", [("pose", "pose"), ("expression", "expression"), ("illumination", "light")])
def test_transfer_copies_only_the_chosen_component(state: EditorState, component: str, key: str) -> None:
    before = state.target_params()
    other = state.transfer(component, other_seed=11)
    after = state.target_params()
    assert torch.equal(after.component(key), other.component(key))
    for name in ("identity", "expression", "albedo", "light", "pose"):
        if name != key:
            assert _same(after, before, name), f"transfer of {component} changed {name}"
    assert "seed 11" in state.message


def test_transfer_pose_moves_the_gan_image_to_the_other_yaw(state: EditorState) -> None:
    other = state.transfer("pose", other_seed=11)
    frame = state.compute_frame(estimate=True)
    assert frame.applied == ("pose",)
    assert frame.estimate.angles_deg[0, 0].item() == pytest.approx(other.angles_deg[0, 0].item(), abs=0.5)


# ---------------------------------------------------------------------------------------- frames
def test_frame_follows_the_yaw_slider(state: EditorState) -> None:
    start = state.compute_frame(estimate=True)
    assert start.applied == ()  # nothing edited: the generator's own image
    yaw0 = start.estimate.angles_deg[0, 0].item()
    state.set_slider("yaw", yaw0 + 25.0)
    frame = state.compute_frame(estimate=True)
    assert frame.applied == ("pose",)
    assert frame.estimate.angles_deg[0, 0].item() == pytest.approx(yaw0 + 25.0, abs=0.5)
    assert not torch.equal(frame.image, start.image)
    assert frame.image.shape == (3, 32, 32) and frame.w_hat.shape == state.w.shape


def test_rigs_apply_in_order_and_only_when_their_component_changed(state: EditorState) -> None:
    calls = []

    def spy(name, rig):
        def wrapped(w, p):
            calls.append(name)
            return rig(w, p)
        return wrapped

    state.rigs = {name: spy(name, rig) for name, rig in toy_rigs().items()}
    state.set_slider("jawOpen", 0.8)
    state.compute_frame()
    assert calls == ["expression"]
    calls.clear()
    state.set_slider("yaw", 10.0)
    frame = state.compute_frame(estimate=True)
    assert calls == ["pose", "expression"] and frame.applied == ("pose", "expression")
    assert frame.estimate.expression[0, JAW].item() == pytest.approx(0.8, abs=0.02)


def test_missing_rig_leaves_the_gan_image_unchanged() -> None:
    state = EditorState(ToyGenerator(), {"pose": yaw_rig}, ToyEstimator(), seed=1)
    image = state.current_image()
    state.set_slider("jawOpen", 0.9)
    frame = state.compute_frame()
    assert frame.applied == () and torch.equal(((frame.image + 1) / 2).clamp(0, 1), image)
    state.transfer("expression", 4)
    assert "no expression rig" in state.message


def test_save_png(state: EditorState, tmp_path) -> None:
    state.set_slider("yaw", 15.0)
    path = state.save_png(tmp_path / "edit.png", size=64)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(path).size == (64, 64)


# ------------------------------------------------------------------------------------ coalescing
def test_fast_updates_render_only_the_latest_value() -> None:
    """50 slider events during one slow render give exactly one more render, of the last value."""
    value = {"yaw": 0}
    started, release = threading.Event(), threading.Event()
    rendered, delivered = [], []

    def render():
        seen = value["yaw"]
        rendered.append(seen)
        if len(rendered) == 1:
            started.set()
            assert release.wait(10)
        return seen

    scheduler = LatestOnly(render, delivered.append, background=True)
    scheduler.request()
    assert started.wait(10)
    for yaw in range(1, 51):  # a fast drag while the first frame renders
        value["yaw"] = yaw
        scheduler.request()
    assert scheduler.busy
    release.set()
    assert scheduler.wait(10)
    assert rendered == [0, 50] and delivered == [0, 50]
    assert scheduler.requested == 51 and scheduler.rendered == 2


def test_coalescing_in_the_calling_thread() -> None:
    """Synchronous mode: a request made while rendering (e.g. by deliver) is coalesced, not recursive."""
    seen = []
    scheduler: LatestOnly[int] = None  # type: ignore[assignment]

    def deliver(result: int) -> None:
        seen.append(result)
        if len(seen) == 1:
            for _ in range(5):
                scheduler.request()

    scheduler = LatestOnly(lambda: len(seen), deliver, background=False)
    scheduler.request()
    assert seen == [0, 1] and not scheduler.busy


def test_render_errors_are_reported_and_the_scheduler_recovers() -> None:
    errors, calls = [], []

    def render():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "ok"

    results = []
    scheduler = LatestOnly(render, results.append, background=False, on_error=errors.append)
    scheduler.request()
    scheduler.request()
    assert [str(e) for e in errors] == ["boom"] and results == ["ok"]


def test_app_renders_latest_slider_value_in_background() -> None:
    """The widget app: a burst of slider moves ends with the image of the last value."""
    pytest.importorskip("ipywidgets")
    generator = ToyGenerator()
    app = editing.EditorApp(generator, toy_rigs(), ToyEstimator(), None, seed=2, background=True)
    assert app.wait(10)
    first = app.image.value
    calls_before = generator.synthesis_calls
    for yaw in range(0, 41, 2):
        app.sliders["yaw"].value = yaw
    assert app.wait(10)
    assert app.image.value != first
    assert app.last_frame.target.angles_deg[0, 0].item() == pytest.approx(40.0)
    assert app.last_frame.estimate.angles_deg[0, 0].item() == pytest.approx(40.0, abs=0.5)
    assert "srl-yaw" in app.estimate_label.value
    assert generator.synthesis_calls - calls_before < 21  # coalesced: fewer renders than events
    app.sliders["yaw"].value = 500  # the widget itself clamps to its max
    app.wait(10)
    app.state.set_slider("pitch", -99)
    assert "clamped" in app.state.message


def test_app_reset_transfer_and_save(tmp_path) -> None:
    pytest.importorskip("ipywidgets")
    app = editing.EditorApp(ToyGenerator(), toy_rigs(), ToyEstimator(), None, seed=2, background=False,
                            save_dir=tmp_path)
    original = app.sliders["yaw"].value
    app.sliders["yaw"].value = 33
    app.transfer_component.value, app.transfer_seed.value = "expression", 9
    app._on_transfer()
    assert "seed 9" in app.message.value
    app._on_save()
    assert list(tmp_path.glob("*.png"))
    app._on_reset()
    assert app.sliders["yaw"].value == pytest.approx(original)
    assert app.state.changed_components() == ()
    app.seed.value = 5
    assert app.state.seed == 5


# ---------------------------------------------------------------------------- real tiny networks
def test_real_tiny_networks_and_the_3dmm_preview(face_model) -> None:
    """Package StyleGAN2 (16 px) + F (64 px input, resized) + a linear rig + the ICT preview."""
    from stylerig_lite.reconstruction import ReconstructionNet, tiny_config
    from stylerig_lite.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator("tiny", seed=0).eval().requires_grad_(False)
    F = ReconstructionNet(tiny_config()).eval().requires_grad_(False)
    direction = torch.randn(1, G.num_ws, G.w_dim)

    def rig(w, p):  # a fixed direction scaled by the target yaw
        return w + direction * p[:, -6, None, None]

    state = EditorState(G, {"pose": rig}, F, face_model, seed=0, preview_size=32, estimate_shown=True)
    state.set_slider("yaw", 30.0)
    frame = state.compute_frame()
    assert frame.image.shape == (3, 16, 16) and frame.applied == ("pose",)
    assert frame.render.shape == (3, 32, 32) and frame.estimate is not None
    assert set(frame.timings_ms) >= {"rig_ms", "generator_ms", "render_ms", "estimate_ms", "total_ms"}


def test_preview_matches_the_triangle_renderer(face_model) -> None:
    """The point-splat preview covers the same pixels as render_face and moves with yaw."""
    preview = editing.PreviewRenderer(face_model, 48)
    params = FaceParams.neutral(1).with_angles_deg(yaw=25.0).with_expression(jawOpen=0.5)
    fast, exact = preview.render(params), preview.render_exact(params)
    assert fast.shape == exact.shape == (3, 48, 48)
    fast_mask, exact_mask = (fast < 0.99).any(0), (exact < 0.99).any(0)
    iou = (fast_mask & exact_mask).sum() / (fast_mask | exact_mask).sum()
    assert iou > 0.85, f"preview mask IoU {iou:.3f}"
    assert (fast - exact).abs()[:, fast_mask & exact_mask].mean() < 0.08
    # Caching: a pose-only change reuses the shape; an expression change recomputes it.
    key = preview._shape_key
    left = preview.render(params.with_angles_deg(yaw=-25.0))
    assert preview._shape_key == key
    columns = torch.arange(48.0)
    centre = lambda img: ((img < 0.99).any(0).float().sum(0) * columns).sum() / (img < 0.99).any(0).sum()  # noqa: E731
    assert centre(left) < centre(fast)  # turning to negative yaw moves the face left... of its +25° pose
    preview.render(params.with_expression(jawOpen=0.9))
    assert preview._shape_key != key
    with pytest.raises(ValueError, match="one face"):
        preview.render(FaceParams.neutral(2))


# --------------------------------------------------------------------------------- the static book
def test_edit_frames_and_animation_html(state: EditorState) -> None:
    pytest.importorskip("matplotlib")
    before = state.target_params()
    images, renders = editing.edit_frames(state, "yaw", [-20, 0, 20])
    assert images.shape == (3, 3, 32, 32) and renders is None
    assert torch.equal(state.target_params().to_vector(), before.to_vector())  # a sweep leaves no trace
    assert not torch.equal(images[0], images[2])
    html = editing.animation_html(state, "yaw", [-20, 0, 20])
    assert "<script" in html and html.count("data:image/png;base64") >= 3


def test_app_ignores_the_browsers_step_snapping() -> None:
    """A synced value snapped to the step grid by the browser is not an edit (no rig switches on)."""
    pytest.importorskip("ipywidgets")
    app = editing.EditorApp(ToyGenerator(), toy_rigs(), ToyEstimator(), None, seed=3, background=False)
    jaw = app.state.slider_value("jawOpen")
    app._on_slider("jawOpen", round(jaw / 0.05) * 0.05)  # what the front end sends back
    assert app.state.changed_components() == ()
    app._on_slider("jawOpen", jaw + 0.3)
    assert app.state.changed_components() == ("expression",)


def test_rignet_modules_plug_in_through_their_rig_method() -> None:
    """A RigNet's forward takes its component's parameters; the editor must call RigNet.rig (full vector)."""
    rignet = pytest.importorskip("stylerig_lite.rignet")
    G = ToyGenerator()
    net = rignet.RigNet(rignet.RigNetConfig(component="pose", num_ws=G.num_ws, w_dim=G.w_dim)).eval()
    state = EditorState(G, {"pose": net}, ToyEstimator(), seed=1)
    state.set_slider("yaw", 25.0)
    frame = state.compute_frame()
    assert frame.applied == ("pose",) and frame.w_hat.shape == state.w.shape
    with pytest.raises(TypeError, match="callable"):
        EditorState(G, {"pose": 3}, ToyEstimator())
