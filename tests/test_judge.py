"""The judge: independent of F, calibrated on exact labels, and honest about what it cannot read."""

from __future__ import annotations

import json

import pytest
import torch

judge_module = pytest.importorskip("stylerig_lite.judge")
from stylerig_lite.judge import READINGS, Calibration, Judge, JudgeError, readings_of_params  # noqa: E402

try:
    judge_module.require_mediapipe()
except JudgeError as error:  # pragma: no cover - CI installs it (requirements/nodeps.txt)
    pytest.skip(str(error), allow_module_level=True)


@pytest.fixture(scope="module")
def judge():
    return Judge()


def test_readings_of_params_are_the_labels_in_degrees_and_weights():
    from stylerig_lite.params import FaceParams

    p = FaceParams.neutral(2).with_angles_deg(yaw=20.0, pitch=-10.0, roll=5.0).with_expression(jawOpen=0.4)
    r = readings_of_params(p.to_vector())
    assert r["yaw"].tolist() == pytest.approx([20.0, 20.0]) and r["pitch"][0] == pytest.approx(-10.0)
    assert r["roll"][0] == pytest.approx(5.0) and r["jaw_open"][0] == pytest.approx(0.4)
    assert r["light_x"][0] == 0 and r["light_y"][0] == 0  # uniform light has no direction


@pytest.fixture(scope="module")
def measured(judge):
    """The report on 512 held-out renders (seed 30000): what the issue's goals are checked on."""
    return judge_module.report(512, judge=judge)


def test_the_judge_meets_the_goals_of_the_evaluation_issue(measured):
    """Goals (issue 23): yaw median error <= 2 deg; errors correlate with F's by <= 0.3 for each reading."""
    assert measured["yaw"]["judge_error_median"] <= 2.0
    for name in READINGS:
        assert measured[name]["detected"] >= 0.95, name
        assert measured[name]["error_correlation_with_F"] <= 0.3, (name, measured[name])
    for name in ("yaw", "pitch", "roll"):  # calibrated: a 10 deg edit reads as 10 deg on average
        assert abs(measured[name]["slope"] - 1) < 0.1, (name, measured[name])


def test_the_calibration_was_fitted_on_other_renders_than_the_report():
    calibration = Calibration.load()
    assert calibration.source["seed"] == judge_module.CALIBRATION_SEED != judge_module.REPORT_SEED
    assert set(calibration.maps) == set(READINGS) and calibration.template.shape == (468, 3)


def test_no_face_reads_as_nan_and_bad_images_are_refused(judge):
    grey = torch.full((2, 3, 64, 64), 0.5)
    read = judge.read(grey)
    assert all(torch.isnan(read[name]).all() for name in READINGS)
    with pytest.raises(ValueError, match="NaN"):
        judge.read(torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="0..255 values"):
        judge.read(torch.full((1, 3, 64, 64), 200.0))  # 8-bit values passed as [0, 1]
    with pytest.raises(ValueError, match="images"):
        judge.read(torch.zeros(3, 64, 64))


def test_a_corrupt_calibration_is_a_clear_error(tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(JudgeError, match="unreadable"):
        Calibration.load(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(JudgeError, match="not a judge calibration"):
        Calibration.load(tmp_path / "d.json")
    with pytest.raises(JudgeError, match="judge --calibrate"):
        Calibration.load(tmp_path / "missing.json")


def test_the_command_refuses_a_tiny_count(capsys):
    from stylerig_lite.cli import main

    assert main(["judge", "--report", "--count", "0"]) == 2
    assert "at least 8" in capsys.readouterr().err


def test_the_shipped_report_meets_the_goals_and_matches_the_calibration_split():
    shipped = judge_module.reported()
    assert shipped["seed"] == judge_module.REPORT_SEED and shipped["count"] == 512
    readings = shipped["readings"]
    assert set(readings) == set(READINGS)
    assert readings["yaw"]["judge_error_median"] <= 2.0
    assert all(r["error_correlation_with_F"] <= 0.3 for r in readings.values())
