"""The interactive editor without a browser: state, sliders, transfer, coalescing, preview, book helpers.

Most tests use the toy generator/estimator/rigs of ``editing_fakes`` (yaw known exactly);
a few build the real package networks at their tiny sizes with random weights, and the
3DMM preview uses the ICT face model (skipped locally, failed in CI, without the mirror).
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from editing_fakes import JAW, ToyEstimator, ToyGenerator, toy_rigs, yaw_rig
from stylerig_lite import editing, render_points
from stylerig_lite.editing import EditorState, LatestOnly
from stylerig_lite.morphable import EXPRESSION_NAMES, SLICES, FaceParams


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
        EditorState(ToyGenerator(), {"lighting": yaw_rig}, ToyEstimator())


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


@pytest.mark.parametrize("component, key", [("pose", "pose"), ("expression", "expression"), ("light", "light"),
                                            ("illumination", "light")])  # the paper's name is an alias
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


def test_preview_render_equals_its_reference(face_model) -> None:
    """The folded, NumPy per-frame path draws what the step-by-step reference draws (float rounding aside)."""
    from stylerig_lite.morphable import sample_params

    preview = editing.PreviewRenderer(face_model, 40)
    samples = sample_params(8, seed=3)
    for i in range(8):  # identity, albedo and light from FaceWorld's distribution, and a wide range of poses
        params = samples[i:i + 1].with_angles_deg(yaw=-50.0 + 14 * i, pitch=(-1) ** i * 25.0, roll=10.0 - 3 * i)
        params = params.with_expression(jawOpen=i / 7, **({"eyeBlink_L": 1.0} if i % 2 else {}))
        fast, reference = preview.render(params), preview.render_reference(params)
        assert fast.shape == reference.shape == (3, 40, 40) and fast.dtype == reference.dtype == torch.float32
        assert 0.0 <= float(fast.min()) and float(fast.max()) <= 1.0
        differ = (fast - reference).abs().amax(0) > 1e-5
        # A point exactly on a pixel border may round into the neighbour: at most a pixel or two.
        assert int(differ.sum()) <= 2, f"sample {i}: {int(differ.sum())} pixels differ"
        assert (fast < 0.99).any(0).sum() > 100  # a face was drawn


def test_compiled_preview_equals_the_numpy_path(face_model, monkeypatch) -> None:
    """With Numba, render() is one compiled loop: the NumPy path's image, bit for bit; the switch turns it off."""
    from stylerig_lite import rasterize_jit
    from stylerig_lite.morphable import sample_params
    from stylerig_lite.render_points import frame_matrix

    if not rasterize_jit.available():
        pytest.skip("numba is not installed")
    preview = editing.PreviewRenderer(face_model, 40)
    samples = sample_params(6, seed=5)
    for i in range(6):
        params = samples[i:i + 1].with_angles_deg(yaw=-60.0 + 24 * i, pitch=(-1) ** i * 20.0)
        params = params.with_expression(jawOpen=i / 5)
        values = params.to_vector()[0].tolist()
        matrix = frame_matrix(values[SLICES["pose"]], values[SLICES["light"]], preview.camera.focal_pixels,
                              preview.camera.distance)
        compiled = preview.render(params)
        assert torch.equal(compiled, preview._render_numpy(matrix)), f"sample {i}"
    calls = []
    monkeypatch.setenv(rasterize_jit.SWITCH, "torch")
    monkeypatch.setattr(preview, "_render_numpy", lambda m: calls.append(m) or compiled)
    preview.render(params)
    assert len(calls) == 1


def test_frame_matrix_is_the_pose_projection_and_the_sh_shading() -> None:
    """One [8, 13] matrix over per-point features reproduces euler_to_matrix + projection + sh_shading."""
    from stylerig_lite.morphable import euler_to_matrix
    from stylerig_lite.shading import sh_shading

    g = torch.Generator().manual_seed(0)
    points = torch.randn(50, 3, generator=g) * 8
    normals = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=1)
    pose = [0.4, -0.3, 0.2, 1.0, -2.0, 3.0]
    gamma = torch.randn(1, 27, generator=g)
    focal, distance = 3.5, 100.0
    rows = torch.from_numpy(render_points.frame_matrix(pose, gamma[0].tolist(), focal, distance)
                            @ render_points.point_features(points, normals))  # [8, P]
    rotation = euler_to_matrix(torch.tensor([pose[:3]]))[0]
    world = points @ rotation.T + torch.tensor(pose[3:])
    rotated = normals @ rotation.T
    torch.testing.assert_close(rows[0], focal * world[:, 0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows[1], -focal * world[:, 1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows[2], distance - world[:, 2], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows[3], rotated[:, 2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows[4:7].T, sh_shading(rotated[None], gamma)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows[7], torch.ones(50))


def _random_rignet(component: str, G: ToyGenerator, seed: int):
    rignet = pytest.importorskip("stylerig_lite.rignet")
    net = rignet.RigNet(rignet.RigNetConfig(component=component, num_ws=G.num_ws, w_dim=G.w_dim, latent_dim=4))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [*net.encoders, *net.decoders]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.2)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
    return net.eval().requires_grad_(False)


def _rigs_in_turn(rigs, w, p, components):
    """The reference: each changed component's RigNet (per-layer path) applied to the previous result."""
    for component in components:
        net = rigs[component]
        w = net(w, net.component.take(p), impl="ref") if hasattr(net, "component") else net(w, p)
    return w


def test_editor_binds_rignets_to_the_latent_and_rebinds_when_it_changes() -> None:
    G = ToyGenerator()
    rigs = {c: _random_rignet(c, G, seed=i) for i, c in enumerate(editing.RIG_COMPONENTS)}
    state = EditorState(G, rigs, ToyEstimator(), seed=1)

    def check(components):
        frame = state.compute_frame(estimate=False)
        assert frame.applied == components
        expected = _rigs_in_turn(rigs, state.w, frame.target.to_vector(), components)
        torch.testing.assert_close(frame.w_hat, expected, rtol=1e-5, atol=1e-5)
        return frame

    state.set_slider("yaw", 20.0)
    check(("pose",))
    state.set_slider("yaw", -15.0)  # the cached binding, a new target
    first = check(("pose",))
    from stylerig_lite.rignet import BoundRigNet

    assert isinstance(state._bound[("pose",)][3], BoundRigNet)  # the bound path, not the fallback
    state.set_slider("jawOpen", 0.7)
    check(("pose", "expression"))  # a chain of two bound RigNets
    assert state._bound[("pose", "expression")][3].rignets == (rigs["pose"], rigs["expression"])
    state.set_slider("light_azimuth", 40.0)
    state.set_slider("yaw", 5.0)
    check(("pose", "expression", "light"))
    # A new face: the latent changes, so every binding must be rebuilt for it.
    state.set_seed(7)
    assert not torch.equal(state.w, first.w_hat) and state.changed_components() == ()
    state.set_slider("yaw", -15.0)
    check(("pose",))
    state.set_latent(state.w * 0.5)
    state.set_slider("yaw", 10.0)
    check(("pose",))
    # Weights changed under a live editor (e.g. more training): the bound rigs follow.
    with torch.no_grad():
        rigs["pose"].decoders[0].weight.mul_(3.0)
    check(("pose",))
    with torch.no_grad():
        state.w.add_(0.1)  # the latent itself modified in place
    check(("pose",))


def test_editor_chains_rignets_then_calls_plain_rigs() -> None:
    """A plain callable after a RigNet is applied to the bound chain's result; spies see every call."""
    G = ToyGenerator()
    calls = []

    def plain_expression(w, p):
        calls.append("expression")
        return toy_rigs()["expression"](w, p)

    rigs = {"pose": _random_rignet("pose", G, seed=0), "expression": plain_expression}
    state = EditorState(G, rigs, ToyEstimator(), seed=2)
    state.set_slider("yaw", 12.0)
    state.set_slider("jawOpen", 0.6)
    frame = state.compute_frame(estimate=False)
    assert frame.applied == ("pose", "expression") and calls == ["expression"]
    assert state._bound[("pose", "expression")][4] == 1  # the RigNet bound, the callable after it
    expected = _rigs_in_turn(rigs, state.w, frame.target.to_vector(), ("pose", "expression"))
    torch.testing.assert_close(frame.w_hat, expected, rtol=1e-5, atol=1e-5)


def test_delta_mode_subtracts_the_rigs_reading_of_the_source() -> None:
    """``delta=True``: ŵ = w + rigs(w, target) - rigs(w, source), for one rig and a chain, refreshed with w."""
    G = ToyGenerator()
    rigs = {c: _random_rignet(c, G, seed=i) for i, c in enumerate(editing.RIG_COMPONENTS)}
    state = EditorState(G, rigs, ToyEstimator(), seed=1, delta=True)
    plain = EditorState(G, rigs, ToyEstimator(), seed=1)

    def check(components):
        frame = state.compute_frame(estimate=False)
        assert frame.applied == components
        source = state.source.to_vector()
        assert not torch.allclose(_rigs_in_turn(rigs, state.w, source, components), state.w)  # a real offset
        expected = state.w + _rigs_in_turn(rigs, state.w, frame.target.to_vector(), components) \
            - _rigs_in_turn(rigs, state.w, source, components)
        torch.testing.assert_close(frame.w_hat, expected, rtol=1e-5, atol=1e-5)
        return frame

    assert torch.equal(state.compute_frame().w_hat, state.w)  # nothing moved: the latent itself
    state.set_slider("yaw", 20.0)
    plain.set_slider("yaw", 20.0)
    first = check(("pose",))
    assert not torch.allclose(first.w_hat, plain.compute_frame().w_hat)
    state.set_slider("jawOpen", 0.7)
    check(("pose", "expression"))
    state.set_seed(5)  # a new latent: the source's reading is recomputed
    state.set_slider("yaw", -10.0)
    check(("pose",))
    with torch.no_grad():
        state.w.add_(0.1)  # changed in place: recomputed too
    check(("pose",))


def test_the_turn_loop_reaches_the_turn_read_in_the_image() -> None:
    """photo.turn_loop: a rig that gives 0.6 of a turn is asked for more until the image shows the turn."""
    from editing_fakes import YAW_SCALE
    from stylerig_lite import photo

    def under_turning(w, p):
        out = w.clone()
        asked = torch.rad2deg(p[:, SLICES["pose"].start]) / YAW_SCALE - w[:, 0, 0]  # latent units
        out[:, :, 0] += 0.6 * asked[:, None]
        return out

    def reader(image):
        return ToyEstimator().estimate(image)[0].angles_deg[0]

    state = EditorState(ToyGenerator(), {"pose": under_turning}, ToyEstimator(), seed=3, delta=True)
    source = state.slider_value("yaw")
    start = float(reader(state.source_image)[0])
    state.set_slider("yaw", source + 15.0)
    once = float(reader(state.compute_frame().image[None])[0]) - start
    assert 7.0 < once < 11.0  # about 0.6 of 15
    frame = photo.turn_loop(state, {"yaw": 15.0}, None, reader=reader)
    assert abs(float(reader(frame.image[None])[0]) - start - 15.0) < photo.TURN_TOLERANCE_DEG
    # a pose that cannot be read: the rig asked once, and a note says so
    state.set_slider("yaw", source + 15.0)
    notes: list = []
    frame = photo.turn_loop(state, {"yaw": 15.0}, None, reader=lambda image: None, notes=notes)
    assert float(reader(frame.image[None])[0]) - start == pytest.approx(once, abs=1e-4)
    assert notes and "could not find the face's pose" in notes[0]


def test_changed_components_compares_like_torch_equal(state: EditorState) -> None:
    def reference(target: FaceParams):
        return tuple(c for c in editing.RIG_COMPONENTS
                     if not torch.equal(target.component(c),
                                        state.source.component(c)))

    assert state.changed_components() == reference(state.target_params()) == ()
    state.set_slider("smile", 0.5)
    assert state.changed_components() == reference(state.target_params()) == ("expression",)
    state.set_slider("light_ambient", 0.3)
    state.set_slider("roll", 4.0)
    assert state.changed_components() == reference(state.target_params()) == editing.RIG_COMPONENTS
    state.reset()
    source_yaw = state.slider_value("yaw")
    state.set_slider("yaw", source_yaw + 1.0)
    state.set_slider("yaw", source_yaw)  # back to the source's value: unchanged again
    assert state.changed_components() == reference(state.target_params())
    state.source = state.source.replace(light=state.source.light + 1.0)  # a new source is noticed
    assert state.changed_components() == reference(state.target_params())


def test_widget_pngs_are_the_frames_pixels(state: EditorState) -> None:
    """image_png / frame_pngs: native-resolution PNGs with to_png's quantisation (the browser scales them)."""
    import io

    import numpy as np
    from PIL import Image

    image = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2  # past [0, 1]
    decoded = np.asarray(Image.open(io.BytesIO(editing.image_png(image))))
    assert decoded.shape == (20, 24, 3)
    reference = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(decoded, reference)
    compressed = editing.image_png(image, compress_level=6)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(compressed))), reference)
    state.set_slider("yaw", 10.0)
    frame = state.compute_frame(estimate=False)
    gan, render = editing.frame_pngs(frame)
    assert render is None  # no face model in this state
    shown = np.asarray(Image.open(io.BytesIO(gan)))
    unit = ((frame.image + 1) / 2).clamp(0, 1)
    assert np.array_equal(shown, (unit.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    saved = np.asarray(Image.open(io.BytesIO(editing.to_png(unit, size=32))))
    assert np.array_equal(shown, saved)  # the same pixels as a saved PNG at the native size


def test_app_shows_native_pngs_with_pixelated_scaling() -> None:
    pytest.importorskip("ipywidgets")
    import io

    from PIL import Image

    app = editing.EditorApp(ToyGenerator(resolution=32), toy_rigs(), ToyEstimator(), None, seed=3,
                            background=False, display_size=128)
    app.sliders["yaw"].value = 20.0
    assert Image.open(io.BytesIO(app.image.value)).size == (32, 32)
    assert app.image.width == "128"  # the browser scales it to the display size ...
    styles = [child.value for child in app.widget.children if "image-rendering" in str(getattr(child, "value", ""))]
    assert styles and "pixelated" in styles[0]  # ... keeping the pixels sharp
    assert "display_ms" in app.last_frame.timings_ms and "PNG" in app.status.value


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


def test_a_rignet_of_another_generator_is_refused() -> None:
    """A RigNet's edits belong to the generator it was trained on: the editor refuses any other at construction."""
    from stylerig_lite.io_utils import module_sha256
    from stylerig_lite.rignet import GeneratorMismatchError, RigNet, RigNetConfig

    G, other = ToyGenerator(), ToyGenerator()
    other.scale.fill_(2.0)  # other weights: another generator
    net = RigNet(RigNetConfig(component="pose", num_ws=G.num_ws, w_dim=G.w_dim)).eval()
    net.record_generator(module_sha256(G))
    EditorState(G, {"pose": net, "expression": toy_rigs()["expression"]}, ToyEstimator(), seed=1)
    with pytest.raises(GeneratorMismatchError, match="this pose RigNet was trained on the generator"):
        EditorState(other, {"pose": net}, ToyEstimator(), seed=1)
    with pytest.raises(GeneratorMismatchError, match="train-rignet"):
        editing.EditorApp(other, {"pose": net}, ToyEstimator(), None, background=False)


def test_a_calibrated_rignet_gets_the_calibrated_request_and_calibrate_false_the_slider_itself() -> None:
    """``request_gain``: the pose rig is asked for source + gain * (slider - source), in the editor and in
    ``rig(w, p, source=...)``; ``calibrate=False`` passes the slider's own request; other rigs unchanged."""
    G = ToyGenerator()
    rigs = {c: _random_rignet(c, G, seed=i) for i, c in enumerate(editing.RIG_COMPONENTS)}
    rigs["pose"].set_request_gain([1.5, 0.5, 1.0])
    state = EditorState(G, rigs, ToyEstimator(), seed=1)
    plain = EditorState(G, rigs, ToyEstimator(), seed=1, calibrate=False)
    for editor in (state, plain):
        editor.set_slider("yaw", editor.slider_value("yaw") + 10.0)
        editor.set_slider("pitch", editor.slider_value("pitch") - 6.0)
        editor.set_slider("jawOpen", 0.6)
    source = state.source.to_vector()
    target = state.target_params().to_vector()
    asked = target.clone()
    asked[:, 190:193] = source[:, 190:193] + torch.tensor([1.5, 0.5, 1.0]) * (target[:, 190:193] - source[:, 190:193])
    torch.testing.assert_close(rigs["pose"].calibrated(target, source), asked)
    # The yaw asked for 15° past the source (1.5 x 10°), the pitch 3° under it (0.5 x -6°).
    turned = FaceParams.from_vector(asked).angles_deg - state.source.angles_deg
    torch.testing.assert_close(turned[0, :2], torch.tensor([15.0, -3.0]), rtol=1e-4, atol=1e-4)
    frame = state.compute_frame(estimate=False)
    expected = _rigs_in_turn(rigs, state.w, asked, ("pose", "expression"))
    torch.testing.assert_close(frame.w_hat, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rigs["pose"].rig(state.w, target, source=source), rigs["pose"].rig(state.w, asked))
    uncalibrated = _rigs_in_turn(rigs, plain.w, plain.target_params().to_vector(), ("pose", "expression"))
    torch.testing.assert_close(plain.compute_frame(estimate=False).w_hat, uncalibrated, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(frame.w_hat, uncalibrated)
    # Without a source, rig() asks as trained; the gain cleared, the calibrated request is the target.
    torch.testing.assert_close(rigs["pose"].rig(state.w, target), rigs["pose"].rig(state.w, target, source=None))
    rigs["pose"].set_request_gain(None)
    assert torch.equal(rigs["pose"].calibrated(target, source), target)
