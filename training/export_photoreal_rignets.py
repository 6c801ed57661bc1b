"""Score the photoreal generator's RigNets (trained through its latent F) and the linear baseline; embed them.

    python training/export_photoreal_rignets.py --runs runs/rignet_ffhq --corpus runs/corpus_ffhq [--count 500] [--export]

Reads ``rignet_<component>.pt`` from ``--runs`` (``--embedded``: the embedded RigNets as
:func:`stylerig_lite.pretrained.rignet` returns them, the pose RigNet with its slider calibration), scores
each next to the linear baseline (fitted on the corpus's latents and the latent F's readings of them) on
``--count`` pairs of the evaluation seed (2020), drawn at 256 px and read by the independent judge
(MediaPipe) and dlib's identity descriptor (there is no second estimator for photographs), plus a yaw
sweep over ±20 degrees; ``--split validation`` scores on the validation seed instead (where choices are
made). Writes ``stylerig_lite/data/photoreal_results.json``
(``evaluate --generator ffhq`` structure), and with ``--export`` embeds each RigNet in fp16 as
``rignet_ffhq_<component>`` with its metrics (``pretrained.export``, which also ships its training log);
``--export-only`` embeds them with the scores already in that file, without scoring again.
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
from stylerig_lite.rignet import RigNet

RESULTS = Path(__file__).resolve().parents[1] / "stylerig_lite" / "data" / "photoreal_results.json"
TRAIN = ("stylerig-lite train-rignet --generator ffhq --component {c} --preset cpu --corpus runs/corpus_ffhq "
         "--out runs/rignet_ffhq/rignet_{c}.pt --threads 1{options}")
SWEEP_YAWS = (-20, -10, 0, 10, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/rignet_ffhq"))
    parser.add_argument("--corpus", default="runs/corpus_ffhq")
    parser.add_argument("--count", type=int, default=ev.DEFAULT_COUNT)
    parser.add_argument("--split", choices=("evaluation", "validation"), default="evaluation")
    parser.add_argument("--components", default="pose,expression,light")
    parser.add_argument("--methods", default="linear,rignet")
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--embedded", action="store_true",
                        help="score the embedded RigNets (with their slider calibration) instead of --runs")
    parser.add_argument("--merge", action="store_true", help="keep the other components' results already in the file")
    parser.add_argument("--label", default="", help="validation runs: a suffix for the output file (one per candidate)")
    parser.add_argument("--notes", default="photoreal MobileStyleGAN (FFHQ), trained through its latent F at 64 px",
                        help="the manifest's notes for an exported RigNet")
    parser.add_argument("--export-only", action="store_true",
                        help="embed the runs with the scores already in photoreal_results.json (no scoring)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.export_only:
        results = json.loads(RESULTS.read_text())
        for component in args.components.split(","):
            if component not in results["methods"].get("rignet", {}):
                raise SystemExit(f"{RESULTS} holds no RigNet score for {component}; score it first (without --export-only)")
        export(args, results)
        return
    seed = ev.VALIDATION_SEED if args.split == "validation" else ev.DEFAULT_SEED
    G = pretrained.photoreal_generator()
    F = pretrained.latent_f("ffhq")
    started = time.time()
    evalset = ev.EvalSet.build(G, F, None, args.count, seed, batch=16, image_size=256)
    print(f"evaluation set: {args.count} pairs in {time.time() - started:.0f} s", file=sys.stderr)
    context = ev.MethodContext(evalset, corpus=args.corpus)
    results: dict = {"generator": "ffhq", "split": args.split, "seed": seed, "count": args.count,
                     "image_size": 256, "methods": {}}
    for method in args.methods.split(","):
        results["methods"][method] = {}
        for component in args.components.split(","):
            path = args.runs / f"rignet_{component}.pt"
            if method == "rignet" and args.embedded:  # what ships: the fp16 file, with its calibration if any
                net = pretrained.rignet(component, generator="ffhq")
                net.check_generator(G)
                edit = ev.rig_method(net, F)
            elif method == "rignet":
                if not path.exists():
                    continue
                net = RigNet.load(path)
                net.check_generator(G)
                edit = net.rig
            else:
                edit = ev.METHODS[method](context, component)
            t = time.time()
            result = ev.evaluate_method(edit, evalset, component)
            if component == "pose":
                result["yaw_sweep"] = ev.yaw_sweep(edit, evalset, SWEEP_YAWS)
            result["seconds"] = round(time.time() - t, 1)
            results["methods"][method][component] = result
            print(f"{method}/{component}: {json.dumps(result.get('judge', {}))[:300]} "
                  f"identity {result['preservation'].get('identity_distance')}", file=sys.stderr)
    out = RESULTS if args.split == "evaluation" else RESULTS.with_name(f"photoreal_validation{args.label}.json")
    if args.merge and out.exists():  # components scored by separate runs (same pairs) go into one file
        previous = json.loads(out.read_text())
        if (previous["seed"], previous["count"]) == (seed, args.count):
            for method, per_component in previous["methods"].items():
                for component, result in per_component.items():
                    results["methods"].setdefault(method, {}).setdefault(component, result)
    atomic_write_json(out, results)
    print(f"wrote {out}")
    if args.export and args.split == "evaluation":
        export(args, results)


def export(args: argparse.Namespace, results: dict) -> None:
    """Embed each run of ``--runs`` as ``rignet_ffhq_<component>`` with both methods' scores from ``results``."""
    for component in args.components.split(","):
        path = args.runs / f"rignet_{component}.pt"
        if not path.exists():
            continue
        config = torch.load(path, map_location="cpu", weights_only=True)["train"]["config"]
        options = "" if config.get("edit_layers") is None else f" --edit-layers {config['edit_layers']}"
        if config.get("steps") != 4000:
            options += f" --steps {config['steps']}"
        if config.get("w_rec", 1.0) != 1.0:
            options += f" --w-rec {config['w_rec']:g}"
        metrics = {m: results["methods"][m].get(component) for m in results["methods"]}
        command = TRAIN.format(c=component, options=options).replace("runs/rignet_ffhq/", f"{args.runs}/")
        pretrained.export(f"rignet_ffhq_{component}", path, command=command,
                          seed=int(config.get("seed", 0)), metrics={"evaluate": metrics},
                          notes=args.notes)
        print(f"embedded rignet_ffhq_{component}")


if __name__ == "__main__":
    main()
