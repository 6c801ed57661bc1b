"""Score the embedded RigNets with the independent judge and record the results in the manifest.

    stylerig-lite make-corpus --out runs/corpus --count 20000 --seed 0 --threads 1
    python training/rescore_embedded.py --corpus runs/corpus [--write]

On the fixed evaluation set (500 pairs, seed 2020; the validation split is seed 2021 and is never
used here) it scores the references (none, donor), the linear baseline fitted on ``--corpus`` and
the embedded RigNet of each component, plus a perfect FaceWorld edit, each read by the judge
(``stylerig_lite.judge``), dlib's identity descriptor and E (a second opinion). The pose methods
also get the +-30 deg yaw sweep. Prints the tables; ``--write`` replaces the ``evaluate`` entry of
each ``rignet_<component>`` manifest record (the weights and their sha256 do not change) and writes
the full results to ``training/eval_results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from stylerig_lite import evaluate as ev
from stylerig_lite import pretrained
from stylerig_lite.io_utils import atomic_write_json

HERE = Path(__file__).resolve().parent
COMMAND = ("stylerig-lite make-corpus --out runs/corpus --count 20000 --seed 0 --threads 1 && "
           "python training/rescore_embedded.py --corpus runs/corpus --write")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="runs/corpus", help="the corpus the linear baseline is fitted on")
    parser.add_argument("--count", type=int, default=ev.DEFAULT_COUNT)
    parser.add_argument("--oracle-count", type=int, default=128, help="FaceWorld scenes for the perfect edit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="record the results in the manifest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()

    G, F, E = pretrained.generator(), pretrained.face_estimator(), pretrained.evaluation_estimator()
    evalset = ev.EvalSet.build(G, F, E, args.count, ev.DEFAULT_SEED)
    context = ev.MethodContext(evalset, corpus=args.corpus)
    results: dict = {}
    for name in ("none", "donor", "linear", "rignet"):
        for component in ev.COMPONENTS:
            method = ev.METHODS[name](context, component)
            results.setdefault(name, {})[component] = ev.evaluate_method(method, evalset, component)
            if component == "pose" and name != "donor":
                results[name][component]["yaw_sweep"] = ev.yaw_sweep(method, evalset)
            print(f"scored {name} / {component} after {time.time() - start:.0f} s", flush=True)
    for component in ev.COMPONENTS:
        results.setdefault("perfect (FaceWorld)", {})[component] = ev.faceworld_oracle(
            E, component, args.oracle_count, judge=evalset.judge, identity=evalset.identity)
    print(ev.format_table(results))
    print(ev.summary_markdown(results))
    print(f"total {time.time() - start:.0f} s")
    if args.write:
        atomic_write_json(HERE / "eval_results.json", {"command": COMMAND, "count": args.count,
                                                       "seed": ev.DEFAULT_SEED, "methods": results})
        manifest = json.loads(pretrained.MANIFEST.read_text())
        for component in ev.COMPONENTS:
            entry = manifest[f"rignet_{component}"]
            metrics = entry.setdefault("metrics", {})
            metrics["evaluate"] = {name: per[component] for name, per in results.items() if component in per}
            metrics["evaluate_command"] = COMMAND
            metrics["measured_with"] = ("the independent judge (MediaPipe FaceMesh, calibrated on FaceWorld), dlib identity "
                                        "distance, E as a second opinion; ablations and layer masks: E only (earlier runs)")
        atomic_write_json(pretrained.MANIFEST, manifest)
        print(f"wrote {pretrained.MANIFEST} and {HERE / 'eval_results.json'}")


if __name__ == "__main__":
    main()
