"""Score the trained RigNets and the pose ablations on the fixed evaluation set; embed the RigNets.

    python training/export_rignets.py --runs runs/rignet --corpus runs/corpus [--export]

Reads ``rignet_<component>.pt``, ``ablate_<term>.pt``, ``pose_2000.pt`` and the layer-mask variants
``pose_layers<K>.pt`` / ``pose_all_layers.pt`` from ``--runs`` (those present), scores them next to
the references (none, random, the linear baseline fitted on ``--corpus``, a perfect FaceWorld edit)
on 500 pairs (seed 2020), the ablations and layer-mask variants on the validation split (500 pairs,
seed 2021: choices are made there, never on the evaluation set), read by the judge, dlib's identity
descriptor and E; writes ``<runs>/../eval_results.json``
and prints the tables. ``--export`` then embeds each RigNet with these metrics (``pretrained.export``: fp16 file, sha256, command, seed and the
generator it was trained on go into ``stylerig_lite/weights/manifest.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from stylerig_lite import evaluate as ev
from stylerig_lite import pretrained
from stylerig_lite.rignet import RigNet
from stylerig_lite.train_rignet import make_config

TRAIN = ("stylerig-lite make-corpus --out runs/corpus --count 20000 --seed 0 --threads 1 && "
         "stylerig-lite train-rignet --f image --component {c} --preset cpu --corpus runs/corpus{options} --out runs/rignet/rignet_{c}.pt --threads 1")
LAYER_MASKS = ("stylerig-lite train-rignet --f image --component pose --preset cpu --corpus runs/corpus --edit-layers {K} "
               "--out runs/rignet/pose_layers{K}.pt --threads 1 (all layers: the same without --edit-layers)")
ABLATE = ("stylerig-lite train-rignet --f image --component pose --preset cpu --corpus runs/corpus --ablate {rec|edit|consist} "
          "--steps 2000 --out runs/rignet/ablate_{term}.pt --threads 1 (reference: the same without --ablate)")


def training_state(path: Path) -> dict:
    """The ``train`` entry of a train-rignet checkpoint: its config, step, history."""
    return torch.load(path, map_location="cpu", weights_only=True)["train"]


def train_command(path: Path, component: str) -> str:
    """The command that trained ``path``, with the options that differ from the cpu preset (a layer mask, steps)."""
    config, default = training_state(path)["config"], dataclasses.asdict(make_config("cpu"))
    options = "".join(f" --{key.replace('_', '-')} {config[key]}" for key in ("edit_layers", "steps")
                      if config.get(key) != default[key])
    return TRAIN.format(c=component, options=options)


def pose_result(rig, evalset: ev.EvalSet, steps: int) -> dict:
    result = ev.evaluate_method(rig, evalset, "pose")
    result["yaw_sweep"] = ev.yaw_sweep(rig, evalset)
    result["steps"] = steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/rignet"))
    parser.add_argument("--corpus", default="runs/corpus")
    parser.add_argument("--count", type=int, default=ev.DEFAULT_COUNT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export", action="store_true", help="embed the RigNets with their metrics")
    parser.add_argument("--reuse-methods", action="store_true",
                        help="take the method results from an earlier eval_results.json (only the ablations are scored again)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    G, F, E = pretrained.generator(), pretrained.face_estimator(), pretrained.evaluation_estimator()
    evalset = ev.EvalSet.build(G, F, E, args.count, ev.DEFAULT_SEED)
    context = ev.MethodContext(evalset, corpus=args.corpus, options={"rignet_dir": str(args.runs)})
    trained = [c for c in ev.COMPONENTS if (args.runs / f"rignet_{c}.pt").exists()]
    out = args.runs.parent / "eval_results.json"
    results: dict = json.loads(out.read_text())["methods"] if args.reuse_methods else {}
    for name in () if args.reuse_methods else ("none", "random", "linear", "rignet"):
        for c in trained if name == "rignet" else ev.COMPONENTS:
            method = ev.METHODS[name](context, c)
            results.setdefault(name, {})[c] = ev.evaluate_method(method, evalset, c)
            if c == "pose" and name != "random":
                results[name][c]["yaw_sweep"] = ev.yaw_sweep("none" if name == "none" else method, evalset)
    for c in () if args.reuse_methods else ev.COMPONENTS:
        results.setdefault("perfect (FaceWorld)", {})[c] = ev.faceworld_oracle(E, c, args.count)
    # Choices (layer masks, step counts, ablations) are compared on the validation split, never on
    # the evaluation set the reported numbers come from.
    validation = ev.EvalSet.build(G, F, E, args.count, ev.VALIDATION_SEED)
    ablations = {}
    for variant, file in [("all terms", "pose_2000.pt")] + [(f"without L_{t}", f"ablate_{t}.pt") for t in ("rec", "edit", "consist")]:
        path = args.runs / file
        if path.exists():
            ablations[variant] = pose_result(RigNet.load(path).rig, validation, int(training_state(path)["step"]))
    layer_masks = {}
    masked = sorted((p for p in args.runs.glob("pose_layers*.pt") if p.stem.removeprefix("pose_layers").isdigit()),
                    key=lambda p: -int(p.stem.removeprefix("pose_layers")))  # pose_layers<K>.pt, most layers first
    for path in [args.runs / "pose_all_layers.pt"] + masked:
        if path.exists():
            rig = RigNet.load(path)
            edit_layers = rig.config.edit_layers
            variant = "all layers" if edit_layers is None else f"first {edit_layers} layers"
            layer_masks[variant] = pose_result(rig.rig, validation, int(training_state(path)["step"]))
    out.write_text(json.dumps({"methods": results, "ablations": ablations, "layer_masks": layer_masks}, indent=1))
    print(ev.format_table(results))
    for table in (ablations, layer_masks):
        if table:
            print(ev.format_table({k: {"pose": v} for k, v in table.items()}))
    if not args.export:
        return
    images_seen = pretrained.read_manifest()["generator"]["images_seen"]
    for c in trained:
        metrics = {"evaluate": {m: results[m][c] for m in results if c in results[m]},
                   "measured_with": f"python training/export_rignets.py ({args.count} pairs, seed {ev.DEFAULT_SEED}; "
                                    f"ablations and layer masks on the validation split, seed {ev.VALIDATION_SEED}; "
                                    "read by the judge, dlib identity and E)"}
        if c == "pose" and ablations:
            metrics["ablations"] = ablations
            metrics["ablation_command"] = ABLATE
        if c == "pose" and layer_masks:
            metrics["layer_masks"] = layer_masks
            metrics["layer_mask_command"] = LAYER_MASKS
        pretrained.export(f"rignet_{c}", args.runs / f"rignet_{c}.pt", command=train_command(args.runs / f"rignet_{c}.pt", c), seed=0, metrics=metrics,
                          notes=f"trained on the embedded FaceWorld generator ({images_seen:,} images); retrain when it changes")
        print("embedded", c)


if __name__ == "__main__":
    main()
