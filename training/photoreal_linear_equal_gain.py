"""The photoreal pose RigNet against the linear baseline *at equal target accuracy*.

    python training/photoreal_linear_equal_gain.py [--gains 1 2 3 4 5] [--count 500] [--threads 1]

At its own step the linear baseline turns the head by 0.23 of the requested yaw and the RigNet by
0.95 (calibrated; 0.82 as trained; ``data/photoreal_results.json``), so comparing their preservation as
they are compares a small edit with a large one. This script lengthens the linear edit (``evaluate.scaled``: ``ŵ = w + k Δw``)
until its judged yaw gain equals the RigNet's, then measures both on the same evaluation pairs:

1. fit the linear baseline on the latents of the photoreal corpus's first ``--fit-count`` items
   (seed 0, untruncated: the same w as ``runs/corpus_ffhq``) and the latent F's readings of them;
2. on the **validation** split (seed 2021, 64 pairs) score the linear edit at each of ``--gains``
   and pick ``k`` where its judged yaw gain, interpolated linearly between the gains tried, equals
   the RigNet's validation yaw gain: that of the RigNet as it ships, with its slider calibration
   (the judge's reading of the last round in ``data/photoreal_pose_calibration.json``), or without
   that file the embedded candidate's as trained (``data/photoreal_validation_pose_rec300.json``);
3. on the **evaluation** split (seed 2020, ``--count`` pairs) score the linear edit at that ``k``.

Writes ``stylerig_lite/data/photoreal_linear_equal_gain.json``; chapter 5 prints it beside the RigNet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from stylerig_lite import evaluate as ev
from stylerig_lite import pretrained
from stylerig_lite.io_utils import atomic_write_json

DATA = Path(__file__).resolve().parents[1] / "stylerig_lite" / "data"
RIGNET_VALIDATION = DATA / "photoreal_validation_pose_rec300.json"
CALIBRATION = DATA / pretrained.CALIBRATION_FILE.format(component="pose")
OUT = DATA / "photoreal_linear_equal_gain.json"


def yaw_gain(result: dict) -> float:
    return float(result["judge"]["gain"]["yaw"])


def matching_gain(curve: dict, target: float) -> float:
    """The step factor ``k`` whose yaw gain is ``target``, linear between the two tried factors around it."""
    points = sorted((float(k), yaw_gain(r)) for k, r in curve.items())
    for (k0, g0), (k1, g1) in zip(points, points[1:]):
        if min(g0, g1) <= target <= max(g0, g1) and g1 != g0:
            return k0 + (target - g0) * (k1 - k0) / (g1 - g0)
    raise SystemExit(f"no tried factor brackets the RigNet's yaw gain {target:.3f}: gains {points}; "
                     "widen --gains")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gains", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0])
    parser.add_argument("--count", type=int, default=ev.DEFAULT_COUNT)
    parser.add_argument("--validation-count", type=int, default=ev.QUICK_COUNT)
    parser.add_argument("--fit-count", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G, F = pretrained.photoreal_generator(), pretrained.latent_f("ffhq")
    started = time.time()
    results: dict = {"command": "python training/photoreal_linear_equal_gain.py " + " ".join(sys.argv[1:]),
                     "generator": "ffhq", "component": "pose", "fit_count": args.fit_count, "fit_seed": 0}

    validation = ev.EvalSet.build(G, F, None, args.validation_count, ev.VALIDATION_SEED, batch=16, image_size=256)
    linear = ev.MethodContext(validation, fit_count=args.fit_count).training_pairs()
    linear = ev.LinearBaseline.fit(*linear, "pose")
    if CALIBRATION.exists():  # the RigNet as it ships: the judge's reading of its calibration's last round
        source = CALIBRATION
        target = float(json.loads(CALIBRATION.read_text())["rounds"][-1]["judge_for_reference"]["yaw_gain"])
    else:
        source = RIGNET_VALIDATION
        target = yaw_gain(json.loads(RIGNET_VALIDATION.read_text())["methods"]["rignet"]["pose"])
    curve = ev.gain_sweep(linear, validation, "pose", args.gains)
    for k, r in curve.items():
        print(f"validation: linear x{k:g}: yaw gain {yaw_gain(r):.3f}, identity "
              f"{r['preservation'].get('identity_distance')}", file=sys.stderr)
    k = matching_gain(curve, target)
    results["validation"] = {"seed": ev.VALIDATION_SEED, "count": args.validation_count,
                             "rignet_yaw_gain": target, "rignet_source": source.name,
                             "curve": {f"{g:g}": r for g, r in curve.items()}, "chosen_factor": round(k, 4)}
    print(f"chosen factor {k:.3f} for the RigNet's validation yaw gain {target:.3f}", file=sys.stderr)
    atomic_write_json(OUT.with_suffix(".partial.json"), results)

    evalset = ev.EvalSet.build(G, F, None, args.count, ev.DEFAULT_SEED, batch=16, image_size=256)
    result = ev.evaluate_method(ev.scaled(linear, k), evalset, "pose")
    results["evaluation"] = {"seed": ev.DEFAULT_SEED, "count": args.count, "factor": round(k, 4),
                             "linear_scaled": result}
    results["seconds"] = round(time.time() - started, 1)
    atomic_write_json(OUT, results)
    OUT.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"evaluation: linear x{k:.2f}: yaw gain {yaw_gain(result):.3f}, relative yaw error "
          f"{result['judge']['relative_error']['yaw_median']:.2f}, identity "
          f"{result['preservation'].get('identity_distance')}; wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
