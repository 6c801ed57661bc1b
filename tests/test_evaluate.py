"""Control metrics with known answers.

Most tests use a fake generator/estimator pair in which the "image" encodes the
parameter vector exactly: ``G(w)`` writes ``w[:, 0]`` (a 196-vector) into the
first pixels, and the estimator reads it back. Then every estimate is known, and
so is every metric: an identity edit changes nothing, a rotation by 5° scores
5°, a linear edit of a linear world is exact.
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch

from stylerig_lite import evaluate as ev
from stylerig_lite.corpus import sample_pairs
from stylerig_lite.evaluate import EvalSet, LinearBaseline, evaluate_method, frechet_distance, generator_quality
from stylerig_lite.morphable import NUM_PARAMS, SLICES, FaceParams

torch.set_num_threads(1)

SCALE = 0.125  # a power of two: encoding and decoding are exact in floating point
YAW = SLICES["pose"].start
ENCODED_ROWS = 4  # 196 values fill the first 4 rows (of 64 pixels) of the red channel


class EncodingGenerator:
    """W+ [B, num_ws, 196] -> "image" [B, 3, 64, 64] holding ``ws[:, 0]`` in its first pixels.

    The bottom half of the image is "background": a function of the identity
    coefficients only, so edits that keep identity keep it, and 'random' does not.
    """

    z_dim = w_dim = NUM_PARAMS
    num_ws = 3
    img_resolution = 64

    def mapping(self, z, c=None, truncation_psi=1.0):
        p = 0.3 * z  # angles of ~17 degrees, expression/identity of order 0.3
        return p[:, None, :].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode="const"):
        batch = ws.shape[0]
        image = torch.zeros(batch, 3 * 64 * 64)
        image[:, :NUM_PARAMS] = ws[:, 0] * SCALE
        image = image.view(batch, 3, 64, 64)
        image[:, :, 32:, :] = 0.5 * torch.tanh(ws[:, 0, SLICES["identity"]].sum(1))[:, None, None, None]
        return image


class EncodingEstimator:
    """Reads the parameters back; ``yaw_bias_deg`` makes it disagree with an unbiased one."""

    def __init__(self, yaw_bias_deg: float = 0.0):
        self.yaw_bias = math.radians(yaw_bias_deg)

    def estimate(self, images, value_range=(-1.0, 1.0)):
        params = images.flatten(1)[:, :NUM_PARAMS] / SCALE
        params[:, YAW] += self.yaw_bias
        return FaceParams.from_vector(params), torch.zeros(images.shape[0], 68, 2)


class EncodingJudge:
    """A judge that reads the encoded parameters exactly, in its own units (readings_of_params)."""

    def read(self, images, value_range=(-1.0, 1.0)):
        from stylerig_lite.judge import readings_of_params

        return readings_of_params(images.flatten(1)[:, :NUM_PARAMS] / SCALE)


def encoded_pixels_mask(params):
    """The "face": the rows that encode the parameters."""
    mask = torch.zeros(params.shape[0], 1, 64, 64, dtype=torch.bool)
    mask[:, :, :ENCODED_ROWS] = True
    return mask


@pytest.fixture(scope="module")
def fake_set() -> EvalSet:
    G, F = EncodingGenerator(), EncodingEstimator()
    return EvalSet.build(G, F, F, count=40, seed=3, batch=16, face_mask=encoded_pixels_mask, judge=EncodingJudge(),
                         identity=None)


def oracle(w, p_target):
    """Writes the whole target into w: exact in this world."""
    return p_target[:, None, :].repeat(1, w.shape[1], 1)


# ----------------------------------------------------------------------------------- references


def test_evalset_is_seeded_and_consistent(fake_set):
    again = EvalSet.build(EncodingGenerator(), EncodingEstimator(), EncodingEstimator(), count=40, seed=3, batch=16,
                          face_mask=encoded_pixels_mask, judge=None, identity=None)
    assert torch.equal(again.w, fake_set.w) and torch.equal(again.v, fake_set.v)
    assert not torch.equal(fake_set.w, fake_set.v)
    torch.testing.assert_close(fake_set.p_w, fake_set.w[:, 0])  # the estimator is exact here
    torch.testing.assert_close(fake_set.e_v, fake_set.v[:, 0])
    target = fake_set.target("pose")
    torch.testing.assert_close(target[:, YAW : YAW + 3], fake_set.p_v[:, YAW : YAW + 3])
    torch.testing.assert_close(target[:, YAW + 3 :], fake_set.p_w[:, YAW + 3 :])  # translation kept from w
    torch.testing.assert_close(target[:, :YAW], fake_set.p_w[:, :YAW])


@pytest.mark.parametrize("component", ev.COMPONENTS)
def test_none_changes_nothing_and_scores_the_distance_to_the_target(fake_set, component):
    result = evaluate_method("none", fake_set, component)
    assert result["count"] == 40
    for key, value in result["preservation"].items():
        assert value == pytest.approx(0.0, abs=1e-9), key
    # Doing nothing leaves the target error at the difference between p_w and the target.
    expected = ev.target_errors(fake_set.p_w, fake_set.target(component), component)
    assert result["target_error"] == pytest.approx(expected, rel=1e-5)
    if component == "pose":
        yaw = torch.rad2deg((fake_set.p_w[:, YAW] - fake_set.p_v[:, YAW]).abs())
        assert result["target_error"]["yaw_deg"] == pytest.approx(float(yaw.mean()), rel=1e-5)
        assert result["target_error"]["yaw_deg"] > 1.0


def test_random_scores_the_floor_and_changes_everything(fake_set):
    result = evaluate_method("random", fake_set, "expression")
    assert result["target_error"]["jaw_open_mae"] == pytest.approx(0.0, abs=1e-6)  # F = E here
    keep = result["preservation"]
    albedo = float((fake_set.v[:, 0, SLICES["albedo"]] - fake_set.w[:, 0, SLICES["albedo"]]).pow(2).mean().sqrt())
    assert keep["albedo_rmse"] == pytest.approx(albedo, rel=1e-5)
    assert "identity_rmse" not in keep and "expression_mae" not in keep  # unreadable at 64 px: not reported
    assert keep["yaw_deg"] > 1.0 and keep["outside_face_mae_255"] > 1.0


def test_floor_includes_the_disagreement_of_F_and_E():
    # F reads yaw 2 degrees too high; E is exact. Targets come from F, so a method that is perfect
    # as F sees it (F(G(ŵ)) = target, as RigNet is trained to be) scores 2 degrees under E, and so
    # does 'random' (its yaw is exactly p_v's as F sees it).
    G, F = EncodingGenerator(), EncodingEstimator(yaw_bias_deg=2.0)
    evalset = EvalSet.build(G, F, EncodingEstimator(), count=16, seed=0, face_mask=encoded_pixels_mask, judge=None,
                            identity=None)

    def perfect_for_F(w, p_target):
        w_hat = oracle(w, p_target)
        w_hat[:, :, YAW] -= F.yaw_bias
        return w_hat

    for method in ("random", perfect_for_F):
        errors = evaluate_method(method, evalset, "pose")["target_error"]
        assert errors["yaw_deg"] == pytest.approx(2.0, abs=1e-4)
        assert errors["pitch_deg"] == pytest.approx(0.0, abs=1e-4)
    # Writing the target itself into this G is exact under E: the floor is F's bias, not the method's.
    assert evaluate_method(oracle, evalset, "pose")["target_error"]["yaw_deg"] == pytest.approx(0.0, abs=1e-4)


def test_a_known_rotation_scores_its_angle(fake_set):
    def turn_5_degrees_past_the_target(w, p_target):
        w_hat = w.clone()
        w_hat[:, :, YAW : YAW + 3] = p_target[:, None, YAW : YAW + 3]
        w_hat[:, :, YAW] += math.radians(5.0)
        return w_hat

    result = evaluate_method(turn_5_degrees_past_the_target, fake_set, "pose")
    errors = result["target_error"]
    assert errors["yaw_deg"] == pytest.approx(5.0, abs=1e-3)
    assert errors["yaw_deg_median"] == pytest.approx(5.0, abs=1e-3)
    assert errors["pitch_deg"] == pytest.approx(0.0, abs=1e-3) and errors["roll_deg"] == pytest.approx(0.0, abs=1e-3)
    for key, value in result["preservation"].items():  # only the angles moved
        assert value == pytest.approx(0.0, abs=1e-5), key


def test_gain_sweep_known_answers(fake_set):
    """Gain 0 is 'none', gain 1 the method; the oracle at gain k leaves (1 - k) of the way to the target."""
    curve = ev.gain_sweep(oracle, fake_set, "pose", (0.0, 0.5, 1.0))
    none, exact = evaluate_method("none", fake_set, "pose"), evaluate_method(oracle, fake_set, "pose")
    assert curve[0.0]["target_error"] == pytest.approx(none["target_error"], rel=1e-4, abs=1e-6)
    for part in ("target_error", "preservation"):
        assert curve[1.0][part] == pytest.approx(exact[part], rel=1e-4, abs=1e-6), part
    for key in ("yaw_deg", "pitch_deg", "roll_deg"):
        assert curve[0.5]["target_error"][key] == pytest.approx(0.5 * none["target_error"][key], rel=1e-3), key
    assert ev.scaled(oracle, 0.5).__name__ == "oracle x0.5"
    with pytest.raises(TypeError, match="callable"):
        ev.scaled("none", 0.5)
    with pytest.raises(ValueError, match="finite"):
        ev.scaled(oracle, float("nan"))


def test_format_table_keeps_the_column_order_of_a_sorted_result(fake_set):
    """The weights manifest stores results with sorted keys; the table still reads yaw, pitch, roll, ..."""
    result = evaluate_method(oracle, fake_set, "pose")
    shuffled = {part: dict(sorted(result[part].items())) if isinstance(result[part], dict) else result[part] for part in result}
    header = ev.format_table({"oracle": {"pose": shuffled}}).splitlines()[2].split()
    assert header == ev.format_table({"oracle": {"pose": result}}).splitlines()[2].split()
    assert header[1:4] == ["yaw_deg", "pitch_deg", "roll_deg"] and header[-1] == "outside_face_mae_255"


def test_yaw_sweep_known_answers(fake_set):
    """The oracle reaches every asked yaw; 'none' stays where the faces were; a method off by 5 degrees scores 5."""
    yaws = (-30, 0, 30)
    exact = ev.yaw_sweep(oracle, fake_set, yaws, count=24)
    assert exact["count"] == 24 and exact["yaws_deg"] == [-30.0, 0.0, 30.0]
    assert exact["median_reached_deg"] == pytest.approx([-30.0, 0.0, 30.0], abs=1e-3)
    assert exact["median_deg"] == pytest.approx(0.0, abs=1e-3)

    def five_past(w, p_target):
        w_hat = oracle(w, p_target)
        w_hat[:, :, YAW] += math.radians(5.0)
        return w_hat

    assert ev.yaw_sweep(five_past, fake_set, yaws)["median_abs_error_deg"] == pytest.approx([5.0] * 3, abs=1e-3)
    unedited = ev.yaw_sweep("none", fake_set, yaws, count=None)
    natural = float(torch.rad2deg(fake_set.e_w[:, YAW]).double().median())
    assert unedited["count"] == len(fake_set)
    assert unedited["median_reached_deg"] == pytest.approx([natural] * 3, abs=1e-3)
    with pytest.raises(ValueError, match="callable"):
        ev.yaw_sweep("random", fake_set)


def test_summary_markdown_table(fake_set):
    results = {"none": {c: evaluate_method("none", fake_set, c) for c in ev.COMPONENTS},
               "oracle": {"pose": evaluate_method(oracle, fake_set, "pose")}}
    results["oracle"]["pose"]["yaw_sweep"] = ev.yaw_sweep(oracle, fake_set, (-30, 30))
    lines = ev.summary_markdown(results).splitlines()
    assert len(lines) == 4 and lines[0].count("|") == len(ev.SUMMARY_COLUMNS) + 2
    none_cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    oracle_cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert none_cells[0] == "none" and none_cells[2] == ""  # no sweep measured for 'none'
    assert none_cells[1] == f"{results['none']['pose']['judge']['relative_error']['yaw_median']:.1f}"
    assert none_cells[3] == "0.00"  # no edit: gain 0
    # The oracle: no error, a full edit, nothing changed outside the face; no identity meter in this set,
    # and no expression or light results.
    assert oracle_cells[1:6] == ["0.0", "0.0", "1.00", "", "0.0"] and oracle_cells[6:] == [""] * 3


class EncodingWorld:
    """A FaceWorld stand-in: the image encodes the parameters (as EncodingGenerator) above a
    background that depends on the scene only, so a perfect edit changes nothing outside the face."""

    def sample(self, n, generator):
        params = FaceParams.from_vector(0.3 * torch.randn(n, NUM_PARAMS, generator=generator))
        return self.render(params, {"shade": torch.rand(n, generator=generator)})

    def render(self, params, scene):
        image = EncodingGenerator().synthesis(params.to_vector()[:, None, :])
        image[:, :, 32:, :] = scene["shade"][:, None, None, None]
        return types.SimpleNamespace(params=params, scene=scene, images_pm1=lambda: image)


@pytest.mark.parametrize("component", ev.COMPONENTS)
def test_faceworld_oracle_scores_a_perfect_edit(component):
    result = ev.faceworld_oracle(EncodingEstimator(), component, count=20, seed=1, world=EncodingWorld(), batch=8,
                                 face_mask=encoded_pixels_mask)
    assert result["count"] == 20
    for key, value in {**result["target_error"], **result["preservation"]}.items():
        assert value == pytest.approx(0.0, abs=1e-4), key
    biased = ev.faceworld_oracle(EncodingEstimator(yaw_bias_deg=2.0), "expression", count=8, world=EncodingWorld(),
                                 face_mask=encoded_pixels_mask)
    assert biased["preservation"]["yaw_deg"] == pytest.approx(0.0, abs=1e-4)  # a constant bias cancels


@pytest.mark.parametrize("component", ev.COMPONENTS)
def test_oracle_is_perfect(fake_set, component):
    result = evaluate_method(oracle, fake_set, component)
    for key, value in {**result["target_error"], **result["preservation"]}.items():
        assert value == pytest.approx(0.0, abs=1e-4), key


# ------------------------------------------------------------------------------ linear baseline


def planted(n=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = torch.randn(3, d, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    params = torch.randn(n, NUM_PARAMS, generator=g, dtype=torch.float64)
    params[:, YAW : YAW + 3] = x @ a.T + b
    ws = x[:, None, :].repeat(1, 4, 1)
    return ws, params, a, b


def test_linear_baseline_recovers_a_planted_relation():
    ws, params, a, b = planted()
    model = LinearBaseline.fit(ws, params, "pose", ridge=0.0)
    torch.testing.assert_close(model.weight, a, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(model.bias, b, atol=1e-8, rtol=1e-8)
    assert min(model.r2) == pytest.approx(1.0, abs=1e-12)

    target = params[:8].clone()
    target[:, YAW : YAW + 3] += torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    w_hat = model(ws[:8], target)
    torch.testing.assert_close(model.predict(w_hat), target[:, YAW : YAW + 3], atol=1e-8, rtol=1e-8)
    step = w_hat - ws[:8]
    torch.testing.assert_close(step, step[:, :1].expand_as(step))  # every layer moved alike
    # Minimum norm: the step lies in the row space of A (nothing along A's null space).
    projector = a.T @ torch.linalg.pinv(a.T)
    torch.testing.assert_close(step[:, 0] @ projector, step[:, 0], atol=1e-8, rtol=1e-8)


def test_ridge_shrinks_and_save_load_round_trips(tmp_path):
    ws, params, a, _ = planted()
    ridge = LinearBaseline.fit(ws, params, "pose", ridge=10.0)
    assert ridge.weight.norm() < 0.9 * a.norm()
    ridge.save(tmp_path / "lin.pt")
    loaded = LinearBaseline.load(tmp_path / "lin.pt")
    assert loaded.component == "pose" and loaded.ridge == 10.0
    torch.testing.assert_close(loaded(ws[:4], params[:4]), ridge(ws[:4], params[:4]))
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a LinearBaseline"):
        LinearBaseline.load(tmp_path / "other.pt")


def test_linear_baseline_is_exact_in_a_linear_world(fake_set):
    G, F = EncodingGenerator(), EncodingEstimator()
    corpus = sample_pairs(G, F, 400, seed=1)
    for component in ev.COMPONENTS:
        model = LinearBaseline.fit(corpus["w"], corpus["params"], component, ridge=1e-9)
        result = evaluate_method(model, fake_set, component)
        for key, value in {**result["target_error"], **result["preservation"]}.items():
            assert value == pytest.approx(0.0, abs=2e-3), (component, key)


def test_method_table_is_extensible(fake_set):
    ev.register_method("oracle-test", lambda context, component: oracle)
    try:
        context = ev.MethodContext(fake_set, fit_count=400)  # more samples than the 196 w dimensions
        methods = {name: ev.METHODS[name](context, "pose") for name in ("none", "donor", "linear", "oracle-test")}
        results = ev.evaluate_methods(methods, fake_set, ["pose"])
        assert set(results) == {"none", "donor", "linear", "oracle-test"}
        assert results["oracle-test"]["pose"]["target_error"]["yaw_deg"] == pytest.approx(0.0, abs=1e-4)
        assert results["linear"]["pose"]["target_error"]["yaw_deg"] < 0.1 * results["none"]["pose"]["target_error"]["yaw_deg"]
    finally:
        ev.METHODS.pop("oracle-test")


# ----------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_give_clear_errors(fake_set):
    ws, params, _, _ = planted()
    model = LinearBaseline.fit(ws, params, "pose")
    with pytest.raises(ValueError, match="unknown component 'hair'"):
        fake_set.target("hair")
    with pytest.raises(ValueError, match="unknown component"):
        evaluate_method("none", fake_set, "lighting")
    with pytest.raises(ValueError, match="unknown component"):
        LinearBaseline.fit(ws, params, "identity")
    with pytest.raises(ValueError, match="unknown reference method"):
        evaluate_method("nothing", fake_set, "pose")
    with pytest.raises(ValueError, match=r"w \(W\+ latents\) has shape"):
        model(ws[:4, 0], params[:4])  # [B, w_dim] instead of [B, num_ws, w_dim]
    with pytest.raises(ValueError, match="dimension 2"):
        model(ws[:4, :, :8], params[:4])
    bad = params[:4].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="p_target contains 1 NaN"):
        model(ws[:4], bad)
    nan_ws = ws.clone()
    nan_ws[3, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        LinearBaseline.fit(nan_ws, params, "pose")
    with pytest.raises(ValueError, match="latents returned by method"):
        evaluate_method(lambda w, p: w[:, 0], fake_set, "pose")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_method(lambda w, p: w * float("nan"), fake_set, "pose")
    with pytest.raises(ValueError, match="ridge"):
        LinearBaseline.fit(ws, params, "pose", ridge=-1)


# -------------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a - a.mean(0)  # zero mean, so that 2a + shift has mean shift
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)
    # b = 2a + shift: Σb = 4Σa and (Σa Σb)^½ = 2Σa, so the distance is |shift|² + tr(Σa).
    cov_a = np.cov(a.numpy(), rowvar=False)
    assert frechet_distance(a, 2 * a + shift) == pytest.approx(float(shift.pow(2).sum()) + np.trace(cov_a), rel=1e-9)
    # Non-commuting covariances: tr((Σa Σb)^½) = Σ √λ(Σa Σb), computed independently here.
    b = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov_b = np.cov(b.numpy(), rowvar=False)
    mean_term = float((a.mean(0) - b.mean(0)).pow(2).sum())
    trace_root = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(0)).sum()
    expected = mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a.float(), b.numpy()) == pytest.approx(expected, rel=1e-4)


def test_frechet_distance_bad_inputs():
    a = torch.randn(10, 3)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(a, torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"expected features \[N, D\]"):
        frechet_distance(a[0], a)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)
    bad = a.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(a, bad)


# ------------------------------------------------------------------------------ generator quality


class NoiseGenerator:
    """Images of uniform noise (like the fake "FaceWorld" below), or constant ones."""

    z_dim = w_dim = 8
    num_ws = 2
    img_resolution = 64

    def __init__(self, constant=False):
        self.constant = constant

    def mapping(self, z, c=None, truncation_psi=1.0):
        return z[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode="const"):
        if self.constant:
            return torch.zeros(ws.shape[0], 3, 64, 64)
        g = torch.Generator().manual_seed(int(ws[0, 0, 0].abs() * 1e6))
        return torch.rand(ws.shape[0], 3, 64, 64, generator=g) * 2 - 1


def test_generator_quality_known_answers():
    from stylerig_lite.reconstruction import ReconstructionNet, tiny_config

    with torch.random.fork_rng():
        torch.manual_seed(0)
        F = ReconstructionNet(tiny_config())
        torch.nn.init.normal_(F.head[-1].weight, std=0.3)
    F.eval()
    faceworld = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    same = generator_quality(NoiseGenerator(), F, faceworld, seed=0, batch=32)
    assert same["count"] == 32 and same["faceworld_count"] == 64
    assert set(same["coverage"]) == {"yaw", "pitch", "roll", "jaw_open"}
    assert same["fd"] >= 0 and same["fd_floor"] > 0
    assert same["fd_ratio"] < 3  # same distribution: about the floor
    flat = generator_quality(NoiseGenerator(constant=True), F, faceworld, seed=0, batch=32)
    assert flat["fd"] > 10 * same["fd"]
    for name, c in flat["coverage"].items():  # one image over and over: no spread at all
        assert c["ratio"] < 1e-3 and not c["pass"], name
    assert not flat["pass"]
    features = F.features(faceworld[:4])
    assert features.shape == (4, F.config.widths[-1])
    with pytest.raises(ValueError, match="at least 8"):
        generator_quality(NoiseGenerator(), F, faceworld[:6])


# ------------------------------------------------------------------------------------ command line


def test_cli_evaluate_json_and_table(tmp_path, capsys, ict_mirror):
    from stylerig_lite.cli import main
    from stylerig_lite.corpus import make_corpus
    from stylerig_lite.reconstruction import ReconstructionNet, tiny_config
    from stylerig_lite.stylegan2 import Generator, get_config, save_checkpoint

    G = Generator(get_config("tiny", img_resolution=64), seed=0).eval()
    paths = {"g": tmp_path / "g.pt", "f": tmp_path / "f.pt", "e": tmp_path / "e.pt"}
    save_checkpoint(paths["g"], G, G_ema=G)
    for seed, key in ((0, "f"), (1, "e")):
        torch.manual_seed(seed)
        net = ReconstructionNet(tiny_config())
        torch.nn.init.normal_(net.head[-1].weight, std=0.1)
        net.save(paths[key])
    common = ["--generator", str(paths["g"]), "--face-estimator", str(paths["f"]),
              "--evaluation-estimator", str(paths["e"]), "--count", "4", "--batch", "4"]
    assert main(["evaluate", *common, "--methods", "none,random,linear", "--fit-count", "48", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"none", "donor", "linear"}  # "random" is the donor's old name
    for per in result.values():
        assert set(per) == set(ev.COMPONENTS)
        assert {"yaw_deg", "pitch_deg", "roll_deg"} <= set(per["pose"]["target_error"])
        assert "outside_face_mae_255" in per["pose"]["preservation"]
    assert all(v == 0 for v in result["none"]["expression"]["preservation"].values())

    # The baseline fitted on a corpus of the same G; a corpus of another G is refused.
    corpus = make_corpus(tmp_path / "corpus", 24, generator=G, estimator=ReconstructionNet.load(paths["f"]), progress=False)
    assert main(["evaluate", *common, "--component", "illumination", "--methods", "linear", "--corpus", str(corpus)]) == 0
    table = capsys.readouterr().out  # 'illumination' is accepted as the light rig's old name
    assert "light" in table and "light_rmse" in table and "linear" in table
    other = make_corpus(tmp_path / "other", 8, generator=Generator(get_config("tiny", img_resolution=64), seed=5),
                        estimator=ReconstructionNet.load(paths["f"]), progress=False)
    assert main(["evaluate", *common, "--methods", "linear", "--corpus", str(other)]) == 2
    assert "another generator" in capsys.readouterr().err
    assert main(["evaluate", *common, "--component", "pose", "--methods", "none,linear", "--fit-count", "48",
                 "--yaw-sweep"]) == 0
    table = capsys.readouterr().out
    assert "yaw sweep on 4 faces" in table and table.count("median |error|") == 1
    assert main(["evaluate", *common, "--methods", "none,magic"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_rignet_method_loads_rignets_from_a_folder(fake_set, tmp_path):
    """`--methods rignet --rignet-dir D` scores D/rignet_<component>.pt; an untrained RigNet is the identity edit."""
    from stylerig_lite.rignet import RigNet, RigNetConfig

    G = fake_set.G
    RigNet(RigNetConfig(component="pose", num_ws=G.num_ws, w_dim=G.w_dim)).save(tmp_path / "rignet_pose.pt")
    context = ev.MethodContext(fake_set, options={"rignet_dir": str(tmp_path)})
    method = ev.METHODS["rignet"](context, "pose")
    untrained = evaluate_method(method, fake_set, "pose")
    none = evaluate_method("none", fake_set, "pose")
    assert untrained["target_error"]["yaw_deg"] == pytest.approx(none["target_error"]["yaw_deg"], abs=1e-6)
    with pytest.raises(FileNotFoundError):
        ev.METHODS["rignet"](context, "expression")  # no rignet_expression.pt in the folder


# ----------------------------------------------------------------------------------- the judge's scores


def test_the_judge_scores_a_perfect_edit_as_perfect_and_no_edit_as_none(fake_set):
    perfect = evaluate_method(oracle, fake_set, "pose")["judge"]
    for name in ("yaw", "pitch", "roll"):
        assert perfect["relative_error"][f"{name}_median"] == pytest.approx(0.0, abs=1e-4)
        assert perfect["target_error"][f"{name}_median"] == pytest.approx(0.0, abs=1e-4)
        assert perfect["gain"][name] == pytest.approx(1.0, abs=1e-4)
    nothing = evaluate_method("none", fake_set, "pose")["judge"]
    assert nothing["gain"]["yaw"] == pytest.approx(0.0, abs=1e-9)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in nothing["preservation"].values())
    assert set(nothing["preservation"]) == {"jaw_open_change_median", "light_x_change_median", "light_y_change_median"}
    light = evaluate_method("random", fake_set, "light")["judge"]
    assert set(light["gain"]) == {"light_x", "light_y"} and light["preservation"]["yaw_change_median"] > 1.0


def test_half_an_edit_has_gain_one_half(fake_set):
    def half(w, p_target):
        return w + 0.5 * (oracle(w, p_target) - w)

    judged = evaluate_method(half, fake_set, "expression")["judge"]
    assert judged["gain"]["jaw_open"] == pytest.approx(0.5, abs=1e-4)


def test_tables_show_the_judge_and_the_summary_reads_it(fake_set):
    results = {"none": {"pose": evaluate_method("none", fake_set, "pose")},
               "oracle": {"pose": evaluate_method(oracle, fake_set, "pose")}}
    table = ev.format_table(results)
    assert "read by the judge" in table and "gai:yaw" in table
    summary = ev.summary_markdown(results)
    assert "pose: yaw gain (judge)" in summary and "| oracle | " in summary


# ------------------------------------------------------------------- bad inputs found in review (issue 23)


def test_counts_below_one_are_usage_errors(capsys):
    from stylerig_lite.cli import main

    for option, value in (("--count", "0"), ("--count", "-1"), ("--fit-count", "0"), ("--batch", "0")):
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", option, value])  # refused by argparse: 0 no longer means "the default, 500"
        assert exit_.value.code == 2
        assert f"argument {option}: must be an integer >= 1, got '{value}'" in capsys.readouterr().err


def test_faceworld_images_in_another_range_are_refused():
    faceworld = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"faceworld images must lie in \[0, 1\].*0\.\.255 values: use images / 255"):
        generator_quality(NoiseGenerator(), None, faceworld * 255)
    with pytest.raises(ValueError, match=r"GAN images in \[-1, 1\]: use \(images \+ 1\) / 2"):
        generator_quality(NoiseGenerator(), None, faceworld * 2 - 1)


def test_bad_linear_baseline_files_are_refused_clearly(tmp_path):
    from bad_files import BAD_FILE_WORDS, bad_checkpoints
    from stylerig_lite.io_utils import CheckpointError

    ws, params, _, _ = planted()
    good = LinearBaseline.fit(ws, params, "pose").save(tmp_path / "linear.pt")
    for kind, path in bad_checkpoints(tmp_path, good).items():
        with pytest.raises(CheckpointError, match=BAD_FILE_WORDS[kind]) as error:
            LinearBaseline.load(path)
        assert "LinearBaseline file" in str(error.value) and "weights_only" not in str(error.value)


def test_a_rignet_of_another_generator_is_refused(tmp_path):
    from stylerig_lite.rignet import GeneratorMismatchError, RigNet, RigNetConfig
    from stylerig_lite.stylegan2 import Generator, get_config

    trained_on, other = (Generator(get_config("tiny"), seed=seed).eval() for seed in (0, 1))
    RigNet(RigNetConfig.for_generator(trained_on, "pose")).record_generator(ev.module_sha256(trained_on)).save(
        tmp_path / "rignet_pose.pt")
    for G, fits in ((trained_on, True), (other, False)):
        context = ev.MethodContext(types.SimpleNamespace(G=G), options={"rignet_dir": str(tmp_path)})
        if fits:
            assert callable(ev.METHODS["rignet"](context, "pose"))
        else:
            with pytest.raises(GeneratorMismatchError, match="trained on the generator"):
                ev.METHODS["rignet"](context, "pose")


def test_cli_refuses_the_embedded_rignets_with_another_generator(tmp_path, capsys, ict_mirror):
    """`evaluate --generator G.pt --methods rignet` used to score the embedded RigNets on G silently."""
    from stylerig_lite.cli import main
    from stylerig_lite.reconstruction import ReconstructionNet, tiny_config
    from stylerig_lite.stylegan2 import Generator, get_config, save_checkpoint

    G = Generator(get_config("tiny", img_resolution=64), seed=0).eval()
    save_checkpoint(tmp_path / "g.pt", G, G_ema=G)
    ReconstructionNet(tiny_config()).save(tmp_path / "f.pt")
    common = ["--generator", str(tmp_path / "g.pt"), "--face-estimator", str(tmp_path / "f.pt"),
              "--evaluation-estimator", str(tmp_path / "f.pt"), "--count", "2", "--batch", "2", "--component", "pose"]
    assert main(["evaluate", *common, "--methods", "rignet"]) == 2
    err = capsys.readouterr().err
    assert "this pose RigNet was trained on the generator" in err and "train-rignet" in err, err


def test_target_distance_known_answers():
    target = torch.zeros(2, NUM_PARAMS)
    estimated = target.clone()
    estimated[0, YAW], estimated[0, YAW + 1] = math.radians(2.0), math.radians(-4.0)  # mean |Δ| 2°
    estimated[0, YAW + 3] = 5.0  # the translation is not part of the pose edit
    estimated[1, SLICES["expression"]][:2] = 0.53  # 2 of 53 weights: mean 0.02
    estimated[1, SLICES["light"]] = 0.1  # every coefficient: RMSE 0.1
    torch.testing.assert_close(ev.target_distance(estimated, target, "pose"), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(ev.target_distance(estimated, target, "expression"), torch.tensor([0.0, 0.02]))
    torch.testing.assert_close(ev.target_distance(estimated, target, "light"), torch.tensor([0.0, 0.1]))


def test_worst_edits_are_the_pairs_farthest_from_their_targets(fake_set):
    """Doing nothing leaves every face where it was: the worst pairs are those whose target is farthest."""
    worst = ev.worst_edits(lambda w, p: w, fake_set, "pose", count=3)
    expected = ev.target_distance(fake_set.e_w, fake_set.target("pose"), "pose")
    torch.testing.assert_close(worst["error"], expected.sort(descending=True).values[:3])
    assert worst["component"] == "pose" and worst["index"].tolist() == expected.argsort(descending=True)[:3].tolist()
    torch.testing.assert_close(worst["edited"], fake_set.images_w[worst["index"]])
    torch.testing.assert_close(worst["estimated"], fake_set.e_w[worst["index"]])
    assert worst["donor"].shape == worst["source"].shape == (3, 3, 64, 64)
    exact = ev.worst_edits(oracle, fake_set, "light", count=2)
    assert float(exact["error"].max()) < 1e-5  # the oracle reaches every target
    with pytest.raises(ValueError, match="count"):
        ev.worst_edits(oracle, fake_set, "light", count=0)


def test_rig_method_gives_a_calibrated_rignet_its_source_from_the_latent_f():
    """``rig_method``: a RigNet without a gain is its own ``rig``; with one, the request is calibrated from
    ``F(w)`` (a latent F), and an image F is refused (it cannot read the source without images)."""
    from stylerig_lite.rignet import RigNet, RigNetConfig

    net = RigNet(RigNetConfig(component="pose", num_ws=4, w_dim=8, latent_dim=4)).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in [*net.encoders, *net.decoders]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.3)
    w, target = torch.randn(3, 4, 8, generator=g), torch.randn(3, 196, generator=g) * 0.2

    class LatentReader:
        reads_latents = True

        def __call__(self, ws):
            return ws.reshape(len(ws), -1)[:, :196].repeat(1, 7)[:, :196] * 0.1

    F = LatentReader()
    assert ev.rig_method(net, F) == net.rig
    net.set_request_gain([2.0, 0.5, 1.0])
    method = ev.rig_method(net, F)
    torch.testing.assert_close(method(w, target), net.rig(w, net.calibrated(target, F(w))))
    assert not torch.allclose(method(w, target), net.rig(w, target))
    with pytest.raises(ValueError, match="needs a latent F"):
        ev.rig_method(net, types.SimpleNamespace(estimate=lambda images: None))
