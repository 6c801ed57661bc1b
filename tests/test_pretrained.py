"""The embedded networks: integrity checks and the accuracy the book reports for them.

The accuracy bounds hold on a fixed held-out FaceWorld set (seed 10000, never seen
in training). They were measured on 512 images (see weights/manifest.json) and
are asserted here on the first 128 with a margin of roughly 1.5x over the
measured values, so that a regression (a wrong weights file, a renderer or
FaceWorld change that shifts the labels) fails while sampling noise does not.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from stylerig_lite import evaluate, pretrained, reconstruction, train_f
from stylerig_lite.world import FaceWorld

torch.set_num_threads(1)

HELD_OUT_SEED = 10_000
COUNT = 128


@pytest.fixture(scope="module")
def held_out(ict_mirror):
    world = FaceWorld()
    return world, train_f.load_or_render_dataset(world, COUNT, HELD_OUT_SEED, cache_dir=False, progress=False)


@pytest.fixture(scope="module")
def scores(held_out):
    world, data = held_out
    return {
        name: evaluate.evaluate_estimator(net, world, COUNT, HELD_OUT_SEED, dataset=data)
        for name, net in (("F", pretrained.face_estimator()), ("E", pretrained.evaluation_estimator()))
    }


def test_manifest_lists_every_embedded_file_with_its_hash():
    manifest = pretrained.read_manifest()
    for name in pretrained.EMBEDDED:  # every network the package names is committed, hashed and explained
        entry = manifest[name]
        path = pretrained.WEIGHTS_DIR / entry["file"]
        assert pretrained.sha256_of(path) == entry["sha256"], name
        assert entry["command"] and isinstance(entry["seed"], int)
    total = sum(p.stat().st_size for p in pretrained.WEIGHTS_DIR.iterdir())
    assert total < 60e6, f"embedded weights take {total / 1e6:.1f} MB; the budget is 60 MB"


def test_latent_fs_are_bound_to_their_generators():
    from stylerig_lite.io_utils import GeneratorMismatchError

    faceworld = pretrained.latent_f("faceworld")
    faceworld.check_generator(pretrained.generator())
    with pytest.raises(GeneratorMismatchError, match="latent F"):
        faceworld.check_generator(pretrained.photoreal_generator())
    with pytest.raises(KeyError, match="unknown generator"):
        pretrained.latent_f("celeba")


def test_corrupt_or_missing_weights_give_clear_errors(tmp_path, monkeypatch):
    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    monkeypatch.setattr(pretrained, "MANIFEST", copy / "manifest.json")
    target = copy / pretrained.EMBEDDED["face_estimator"][0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(pretrained.WeightsError, match="corrupt"):
        pretrained.face_estimator()
    target.unlink()
    with pytest.raises(pretrained.WeightsError, match="missing"):
        pretrained.face_estimator()
    with pytest.raises(KeyError, match="unknown embedded network"):
        pretrained.embedded_path("face_estimatr")


def test_embedded_f_accuracy_on_held_out_faceworld(scores):
    f = scores["F"]
    # Measured on 512 images: yaw/pitch/roll medians 1.23/1.08/0.65 deg, landmarks 0.75 px; on these
    # 128: 1.11/1.19/0.65 deg and 0.73 px.
    assert f["yaw_deg_median"] < 1.8 and f["pitch_deg_median"] < 1.8 and f["roll_deg_median"] < 1.0
    assert f["landmarks_px_mean"] < 1.1
    # Light and jaw opening clearly better than always guessing the FaceWorld mean
    # (measured: light 0.33x and jaw 0.47x the mean predictor's error on 512 images).
    assert f["light_rmse"] < 0.5 * f["light_rmse_mean_predictor"]
    assert f["jaw_open_mae"] < 0.75 * f["jaw_open_mae_mean_predictor"]


def test_evaluation_estimator_is_independent_but_agrees(held_out, scores):
    e = scores["E"]
    # Measured on 512 images: 1.43/1.22/0.77 deg, jaw 0.50x the mean predictor's error.
    assert e["yaw_deg_median"] < 2.1 and e["pitch_deg_median"] < 2.1 and e["roll_deg_median"] < 1.2
    assert e["jaw_open_mae"] < 0.75 * e["jaw_open_mae_mean_predictor"]
    F, E = pretrained.face_estimator(), pretrained.evaluation_estimator()
    assert F.config.widths != E.config.widths  # another width (and seed): not the same network
    agreement = reconstruction.estimator_agreement(F, E, held_out[1].float_images())
    # Measured on 512 images: yaw correlation 0.991, median |yaw_F - yaw_E| 1.35 deg.
    assert agreement["yaw_correlation"] > 0.97 and agreement["yaw_deg_median"] < 2.0


def test_rignet_trained_on_another_generator_is_refused(tmp_path, monkeypatch):
    """An embedded RigNet whose manifest names another generator than the embedded one is an error."""
    import json

    from stylerig_lite.rignet import RigNet, RigNetConfig

    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    monkeypatch.setattr(pretrained, "MANIFEST", copy / "manifest.json")
    path = RigNet(RigNetConfig(component="pose", num_ws=10, w_dim=256)).save(copy / "rignet_pose.pt")
    manifest = pretrained.read_manifest()
    manifest["rignet_pose"] = {"file": path.name, "sha256": pretrained.sha256_of(path), "command": "test", "seed": 0,
                               "generator_sha256": "0" * 64}
    pretrained.MANIFEST.write_text(json.dumps(manifest))
    with pytest.raises(pretrained.WeightsError, match="trained on the generator with sha256 000000000000"):
        pretrained.rignet("pose")
    manifest["rignet_pose"]["generator_sha256"] = manifest["generator"]["sha256"]
    pretrained.MANIFEST.write_text(json.dumps(manifest))
    assert pretrained.rignet("pose").config.num_ws == 10


# ------------------------------------------------------------------------------------- RigNets


@pytest.fixture(scope="module")
def rig_evalset(ict_mirror):
    from stylerig_lite import evaluate

    return evaluate.EvalSet.build(pretrained.generator(), pretrained.face_estimator(), pretrained.evaluation_estimator(),
                                  64, evaluate.DEFAULT_SEED)


def test_embedded_rignets_are_tied_to_the_embedded_generator():
    manifest = pretrained.read_manifest()
    for component in ("pose", "expression", "light"):
        entry = manifest[f"rignet_{component}"]
        assert entry["generator_sha256"] == manifest["generator"]["sha256"], component
        assert pretrained.sha256_of(pretrained.WEIGHTS_DIR / entry["file"]) == entry["sha256"]
        assert {"none", "linear", "rignet"} <= set(entry["metrics"]["evaluate"]), component


def test_embedded_pose_rignet_turns_heads(rig_evalset):
    """Measured on these 64 pairs: yaw error 2.53 deg (none 16.0), pitch 1.42, roll 1.56, change outside
    the face 17.7 levels, albedo change 0.218; yaw sweep on 32 faces reaches -24.8 / 0.0 / +21.1 deg for
    -30 / 0 / +30."""
    from stylerig_lite import evaluate

    pose = pretrained.rignet("pose")
    assert pose.config.edit_layers == 4  # the layer mask of chapter 5, section 8: the fine layers keep w
    w = rig_evalset.w[:4]
    assert torch.equal(pose.rig(w, rig_evalset.target("pose")[:4])[:, 4:], w[:, 4:])
    none = evaluate.evaluate_method("none", rig_evalset, "pose")["target_error"]
    result = evaluate.evaluate_method(pose.rig, rig_evalset, "pose")
    error = result["target_error"]
    assert error["yaw_deg"] < 3.0 and error["yaw_deg"] < 0.5 * none["yaw_deg"]
    assert error["pitch_deg"] < 3.0 and error["roll_deg"] < 2.0
    assert result["preservation"]["albedo_rmse"] < 0.25
    sweep = evaluate.yaw_sweep(pose.rig, rig_evalset, (-30, 0, 30), count=32)
    low, mid, high = sweep["median_reached_deg"]
    assert low < -19 and high > 19 and abs(mid) < 3


# The goals below are those the first embedded RigNets met (outside-face change < 14 levels, jaw error
# < 1.2 x 0.080, a head turn < 2.5 deg while editing expression or light). The RigNets of the 1,032,192-image
# generator miss some of them; the tests hold the goals and say so (strict xfail: a model that meets a goal
# again turns the xfail into a failure, so the mark must then be removed), instead of loosening them.
MISSES = {
    "outside": "measured 17.7 levels on these 64 pairs (goal < 14): the pose RigNet of the current generator "
               "moves hair and background more",
    "jaw": "measured jaw error 0.120 on these 64 pairs (goal < 0.096 = 1.2 x 0.080)",
    "turn": "measured a head turn of 3.0 deg on these 64 pairs (goal < 2.5 deg; the light RigNet's 2.45 meets it)",
}


@pytest.mark.xfail(strict=True, reason=MISSES["outside"])
def test_pose_edits_keep_the_outside_of_the_face(rig_evalset):
    from stylerig_lite import evaluate

    result = evaluate.evaluate_method(pretrained.rignet("pose").rig, rig_evalset, "pose")
    assert result["preservation"]["outside_face_mae_255"] < 14.0


@pytest.mark.parametrize("component, key, goal, none_measured", [
    pytest.param("expression", "jaw_open_mae", 0.080, 0.181, marks=pytest.mark.xfail(strict=True, reason=MISSES["jaw"])),
    ("light", "light_rmse", 0.178, 0.282),
])
def test_embedded_rignets_move_toward_the_target(rig_evalset, component, key, goal, none_measured):
    """E's error of the edit, against the goal (1.2 x the first RigNets' error) and against doing nothing."""
    from stylerig_lite import evaluate

    none = evaluate.evaluate_method("none", rig_evalset, component)["target_error"][key]
    result = evaluate.evaluate_method(pretrained.rignet(component).rig, rig_evalset, component)
    assert none == pytest.approx(none_measured, rel=0.02)  # the same evaluation set as when measured
    assert result["target_error"][key] < 1.2 * goal and result["target_error"][key] < 0.8 * none


@pytest.mark.parametrize("component", [
    pytest.param("expression", marks=pytest.mark.xfail(strict=True, reason=MISSES["turn"])), "light"])
def test_expression_and_light_edits_keep_the_head_still(rig_evalset, component):
    from stylerig_lite import evaluate

    result = evaluate.evaluate_method(pretrained.rignet(component).rig, rig_evalset, component)
    assert result["preservation"]["yaw_deg"] < 2.5


def test_embedded_pose_rignet_beats_the_linear_baseline(rig_evalset):
    """Read by the independent judge on the fixed 64 pairs. Measured: RigNet turns the head by 1.04x the
    asked yaw change (relative error 3.8 deg); the linear baseline by 0.05x (10.8 deg)."""
    from stylerig_lite import evaluate

    context = evaluate.MethodContext(rig_evalset)
    judged = {name: evaluate.evaluate_method(evaluate.METHODS[name](context, "pose"), rig_evalset, "pose")["judge"]
              for name in ("rignet", "linear")}
    assert judged["rignet"]["detected"] >= 0.95
    assert judged["rignet"]["relative_error"]["yaw_median"] < 0.5 * judged["linear"]["relative_error"]["yaw_median"]
    assert abs(judged["rignet"]["gain"]["yaw"] - 1) < 0.2 and judged["linear"]["gain"]["yaw"] < 0.5


def test_an_exported_rignet_ships_its_training_log(tmp_path, monkeypatch):
    """export() writes the run's loss history beside the weights; training_log() reads it back, checked."""
    from stylerig_lite.rignet import RigNet, RigNetConfig

    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    monkeypatch.setattr(pretrained, "MANIFEST", copy / "manifest.json")
    G = pretrained.generator()
    history = [{"step": 50, "elapsed_s": 1.5, "loss": 0.25, "rec": 0.0, "edit": 0.2},
               {"step": 100, "elapsed_s": 3.0, "loss": 0.125, "rec": 0.01, "edit": 0.1}]
    run = RigNet(RigNetConfig.for_generator(G, "pose")).save(
        tmp_path / "run.pt", extra={"train": {"config": {"steps": 100, "seed": 0}, "history": history}})
    pretrained.export("rignet_pose", run, command="stylerig-lite train-rignet --component pose", seed=0)
    log = pretrained.training_log("rignet_pose")
    assert log["history"] == history and log["command"] == "stylerig-lite train-rignet --component pose"
    assert log["config"] == {"steps": 100, "seed": 0}
    # A tampered log is refused; a network exported without one says how to make it.
    path = copy / pretrained.read_manifest()["rignet_pose"]["training_log"]
    path.write_text(path.read_text().replace("0.125", "0.126"))
    with pytest.raises(pretrained.WeightsError, match="corrupt"):
        pretrained.training_log("rignet_pose")
    with pytest.raises(pretrained.WeightsError, match="without its training log"):
        pretrained.training_log("rignet_light")
    with pytest.raises(KeyError, match="unknown embedded network"):
        pretrained.training_log("rignet_hair")


@pytest.mark.parametrize("component", ["pose", "expression", "light"])
def test_the_photoreal_rignets_ship_the_log_of_their_own_command(component):
    """Each embedded photoreal RigNet's log is the run of the manifest's command: same flags, every step logged."""
    name = f"rignet_ffhq_{component}"
    entry, log = pretrained.read_manifest()[name], pretrained.training_log(name)
    assert log["command"] == entry["command"] and log["name"] == name
    config, words = log["config"], entry["command"].split()

    def flag(option: str, kind, default):
        return kind(words[words.index(option) + 1]) if option in words else default

    assert config["generator"] == "ffhq" and config["f"] == "latent" and config["component"] == component
    assert config["steps"] == flag("--steps", int, 4000) and config["seed"] == 0
    assert config["w_rec"] == flag("--w-rec", float, 1.0)
    assert config["edit_layers"] == flag("--edit-layers", int, None)
    steps = [entry["step"] for entry in log["history"]]
    assert steps == list(range(config["log_every"], config["steps"] + 1, config["log_every"]))
    assert all(torch.isfinite(torch.tensor([v for k, v in e.items() if k != "step"])).all() for e in log["history"])


def test_the_photoreal_pose_rignet_ships_its_slider_calibration(monkeypatch, tmp_path):
    """The shipped calibration (training/pose_calibration.py) is set on the embedded pose RigNet, belongs to
    that file by sha256, and was measured on the validation split by the dlib head-pose reader."""
    calibration = pretrained.rig_calibration("pose")
    assert calibration["split"] == "validation" and calibration["reader"].startswith("photo.head_pose")
    last = calibration["rounds"][-1]
    assert calibration["request_gain"] == last["request_gain"]
    assert calibration["request_gain"][2] == 1.0  # roll is left as trained
    check = calibration["reader_on_faceworld"]  # both readers against FaceWorld's exact poses (chapter 5)
    assert {"head_pose", "judge"} <= set(check) and 0 < check["head_pose"]["found"] <= check["count"]
    # The rule: each round divides the factors by the head-pose gains of the round before.
    for before, after in zip(calibration["rounds"], calibration["rounds"][1:]):
        for k, name in enumerate(("yaw", "pitch")):
            expected = before["request_gain"][k] / before["head_pose"][f"{name}_gain"]
            assert abs(after["request_gain"][k] - expected) < 1e-3
    net = pretrained.rignet("pose", generator="ffhq")
    assert net.request_gain.tolist() == pytest.approx(calibration["request_gain"])
    for component in ("expression", "light"):
        assert pretrained.rig_calibration(component) is None
        assert pretrained.rignet(component, generator="ffhq").request_gain is None
    # A calibration measured for another file of that name is refused, not applied.
    other = dict(calibration, rignet_sha256="0" * 64)
    (tmp_path / pretrained.CALIBRATION_FILE.format(component="pose")).write_text(json.dumps(other))
    monkeypatch.setattr(pretrained, "DATA_DIR", tmp_path)
    with pytest.raises(pretrained.WeightsError, match="pose_calibration.py"):
        pretrained.rignet("pose", generator="ffhq")
