"""Calibrate the photoreal pose RigNet's yaw and pitch sliders on the validation split, with dlib's head pose.

    python training/pose_calibration.py [--count 64] [--threads 2] [--write]

The pose RigNet turns the photoreal generator's heads by a fraction of the asked change (the judge read
0.82 of the yaw and 1.44 of the pitch on the 500 evaluation pairs, chapter 5). This measures that
fraction on the validation split (seed 2021, never the evaluation pairs) with a reader other than the
judge: :func:`stylerig_lite.photo.head_pose`, dlib's 68 landmarks with the 3DMM's pose fitted to them
(another detector, trained on other photographs, than the judge's MediaPipe). Each round draws every
pair's edit at 256 px with the request ``source + c * (target - source)`` and reads the turn of the head
in ``G(w_hat)`` against ``G(w)``; the gain is the least-squares slope through the origin of the read on
the asked change, over the pairs where dlib finds both faces, and the next round asks with
``c / gain``. Round 0 asks as trained (``c = 1``); the rounds stop when both gains are within
``--tolerance`` of 1 or after ``--rounds``; the factors of the last round measured are the calibration.
Roll keeps ``c = 1`` (its error is already under 1 degree). The judge's readings of the same frames are
recorded beside each round for the book, and play no part in the choice.

How far dlib's reader can be trusted is checked where the truth is known: ``--faceworld-check`` reads 96
FaceWorld portraits (seed 4242, upsampled from 64 to 256 px for dlib's detector; the pose fit starts
frontal) with it and with the judge, and records each reader's slope against the exact yaw and pitch
(``reader_on_faceworld``; with ``--faceworld-check-only`` it is added to the shipped file alone).

``--write`` stores the result as ``stylerig_lite/data/photoreal_pose_calibration.json``, tied to the
embedded RigNet file by its sha256; :func:`stylerig_lite.pretrained.rignet` applies it
(:meth:`stylerig_lite.rignet.RigNet.set_request_gain`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from stylerig_lite import evaluate as ev
from stylerig_lite import photo, pretrained
from stylerig_lite.corpus import synthesize
from stylerig_lite.io_utils import atomic_write_json
from stylerig_lite.morphable import load_face_model
from stylerig_lite.params import FaceParams

OUT = pretrained.DATA_DIR / pretrained.CALIBRATION_FILE.format(component="pose")
ANGLES = ("yaw", "pitch")


def head_angles(images: torch.Tensor, starts: torch.Tensor, face_model) -> torch.Tensor:
    """``[N, 2]`` yaw and pitch (degrees) of ``images [N, 3, S, S]`` in [-1, 1], read by head_pose from the
    parameters ``starts [N, 196]`` (NaN where dlib finds no face)."""
    read = []
    for i in range(len(images)):
        pose = photo.head_pose(images[i:i + 1], FaceParams.from_vector(starts[i:i + 1]), face_model)
        read.append([math.nan] * 2 if pose is None else pose[:2].tolist())
    return torch.tensor(read, dtype=torch.float64)


def slope_and_error(read: torch.Tensor, asked: torch.Tensor) -> dict:
    """Per angle: least-squares slope through the origin and median |read - asked|, over the finite rows."""
    ok = torch.isfinite(read).all(1)
    r, q = read[ok], asked[ok].double()
    out = {"pairs": int(ok.sum())}
    for k, name in enumerate(ANGLES):
        out[f"{name}_gain"] = round(float((r[:, k] * q[:, k]).sum() / (q[:, k] ** 2).sum()), 4)
        out[f"{name}_median_abs_error_deg"] = round(float((r[:, k] - q[:, k]).abs().median()), 3)
    return out


def faceworld_check(face_model, count: int = 96, seed: int = 4242) -> dict:
    """Each reader's least-squares slope and median error against FaceWorld's exact yaw and pitch."""
    import torch.nn.functional as nnf

    from stylerig_lite.judge import Judge
    from stylerig_lite.world import FaceWorld

    batch = FaceWorld().sample(count, seed=seed)
    truth = batch.params.angles_deg[:, :2].double()
    upsampled = nnf.interpolate(batch.images, size=256, mode="bilinear", align_corners=False).clamp(0, 1) * 2 - 1
    frontal = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # the fit starts with no rotation, at the true position
    starts = batch.params.detach()
    read = head_angles(upsampled, starts.replace(pose=starts.pose * frontal).to_vector(), face_model)
    judged = Judge().read(batch.images, value_range=(0, 1))
    out = {"count": count, "seed": seed}
    for name, reading in (("head_pose", read),
                          ("judge", torch.stack([judged[n] for n in ANGLES], 1))):
        ok = torch.isfinite(reading).all(1)
        r, t = reading[ok], truth[ok]
        entry = {"found": int(ok.sum())}
        for k, angle in enumerate(ANGLES):
            x, y = t[:, k] - t[:, k].mean(), r[:, k] - r[:, k].mean()
            entry[f"{angle}_slope"] = round(float((x * y).sum() / (x * x).sum()), 3)
            entry[f"{angle}_median_abs_error_deg"] = round(float((r[:, k] - t[:, k]).abs().median()), 2)
        out[name] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64, help="validation pairs (default 64, as the layer choices)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds measured at most (round 0 asks as trained)")
    parser.add_argument("--tolerance", type=float, default=0.03, help="stop when both gains are within this of 1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help=f"write {OUT.name} into the package")
    parser.add_argument("--faceworld-check", action="store_true", help="also read FaceWorld's exact poses")
    parser.add_argument("--faceworld-check-only", action="store_true",
                        help=f"only the FaceWorld check, added to the shipped {OUT.name}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.faceworld_check_only:
        result = json.loads(OUT.read_text())
        result["reader_on_faceworld"] = faceworld_check(load_face_model(progress=False))
        result["reader_on_faceworld"]["command"] = (f"python training/pose_calibration.py --threads {args.threads} "
                                                    "--faceworld-check-only")
        atomic_write_json(OUT, result)
        print(json.dumps(result["reader_on_faceworld"], indent=1))
        return
    started = time.time()
    G, F = pretrained.photoreal_generator(), pretrained.latent_f("ffhq")
    rig = pretrained.rignet("pose", generator="ffhq").set_request_gain(None)  # as trained
    face_model = load_face_model(progress=False)
    evalset = ev.EvalSet.build(G, F, None, args.count, ev.VALIDATION_SEED, batch=16, image_size=256, identity=None)
    target = evalset.target("pose")
    asked = (FaceParams.from_vector(target).angles_deg - FaceParams.from_vector(evalset.p_w).angles_deg)[:, :2]
    judge_w = torch.stack([evalset.j_w[name] for name in ANGLES], 1)
    head_w = head_angles(evalset.images_w, evalset.p_w, face_model)  # the sources: read once, not every round
    gain = torch.ones(3)  # yaw, pitch, roll
    rounds = []
    for round_index in range(args.rounds):
        rig.set_request_gain(gain)
        w_hat = torch.cat([rig.rig(evalset.w[i:i + 16], target[i:i + 16], source=evalset.p_w[i:i + 16])
                           for i in range(0, len(target), 16)])
        images = torch.cat([synthesize(G, w_hat[i:i + 16], image_size=256) for i in range(0, len(w_hat), 16)])
        measured = slope_and_error(head_angles(images, evalset.p_w, face_model) - head_w, asked)
        judged = evalset.judge.read(images, value_range=(-1, 1))
        judge = slope_and_error(torch.stack([judged[name] for name in ANGLES], 1) - judge_w, asked)
        rounds.append({"request_gain": [round(float(g), 4) for g in gain], "head_pose": measured,
                       "judge_for_reference": judge})
        print(json.dumps(rounds[-1]), file=sys.stderr)
        if all(abs(measured[f"{name}_gain"] - 1) <= args.tolerance for name in ANGLES):
            break
        if round_index + 1 < args.rounds:
            gain = gain.clone()
            gain[:2] = torch.tensor([float(gain[k]) / measured[f"{name}_gain"] for k, name in enumerate(ANGLES)])
    result = {
        "request_gain": rounds[-1]["request_gain"],
        "rule": ("the factors of the last round measured: round 0 asks as trained, each next round divides by the "
                 "head_pose gain (least-squares slope of the read on the asked turn) of the one before; stop when "
                 f"both gains are within {args.tolerance} of 1 or after {args.rounds} rounds"),
        "reader": "photo.head_pose (dlib's 68 landmarks, the 3DMM's pose fitted by Levenberg-Marquardt)",
        "split": "validation", "seed": ev.VALIDATION_SEED, "count": args.count, "image_size": 256,
        "rounds": rounds,
        "asked_median_abs_deg": {name: round(float(asked[:, k].abs().median()), 2) for k, name in enumerate(ANGLES)},
        "rignet_sha256": pretrained.read_manifest()["rignet_ffhq_pose"]["sha256"],
        "command": f"python training/pose_calibration.py --count {args.count} --threads {args.threads} --write",
        "seconds": round(time.time() - started, 1),
    }
    if args.faceworld_check:
        result["reader_on_faceworld"] = faceworld_check(face_model)
    if args.write:
        atomic_write_json(OUT, result)
        print(f"wrote {OUT}", file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
