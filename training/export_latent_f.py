"""Score a trained latent F on held-out pairs, embed it, and ship its training log for the book.

    python training/export_latent_f.py --generator faceworld --run runs/latent_f_faceworld.pt [--export]
    python training/export_latent_f.py --generator ffhq --run runs/latent_f_ffhq.pt [--export]

Scores the run with ``stylerig_lite.evaluate_f`` on 500 fresh pairs of the evaluation seed (30000; the
training corpora use seed 0), writes ``stylerig_lite/data/latent_f_<generator>.json`` (config, framing, split,
the validation curve and a thinned training-loss curve, the held-out metrics;
``notebooks/04_face_reconstruction.ipynb`` plots it in every mode), and with ``--export`` embeds the
network in fp16 with the command, seed and metrics in ``stylerig_lite/weights/manifest.json``
(``pretrained.export``), tied to its generator's sha256.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from stylerig_lite import evaluate_f, pretrained
from stylerig_lite.io_utils import atomic_write_json
from stylerig_lite.latent_f import LatentF

COMMANDS = {
    "faceworld": ("stylerig-lite make-corpus --generator faceworld --count 20000 --out runs/corpus --threads 1 && "
                  "stylerig-lite train-latent-f --generator faceworld --corpus runs/corpus "
                  "--out runs/latent_f_faceworld.pt --threads 1"),
    "ffhq": ("stylerig-lite make-corpus --generator ffhq --count 10000 --out runs/corpus_ffhq --batch 8 && "
             "stylerig-lite train-latent-f --generator ffhq --corpus runs/corpus_ffhq "
             "--out runs/latent_f_ffhq.pt --threads 1"),
}


def thinned(history: list, every: int = 25) -> list:
    """Training-loss entries averaged over ``every`` steps, plus every validation entry."""
    out, window = [], []
    for entry in history:
        window.append(entry)
        if len(window) == every or "validation" in entry:
            keys = {k for e in window for k, v in e.items() if isinstance(v, float)}
            row = {k: round(sum(e.get(k, 0.0) for e in window) / sum(k in e for e in window), 6)
                   for k in keys if any(k in e for e in window)}
            row["step"] = entry["step"]
            if "validation" in entry:
                row["validation"] = entry["validation"]
            out.append(row)
            window = []
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", choices=sorted(COMMANDS), required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--count", type=int, default=evaluate_f.EVAL_COUNT)
    parser.add_argument("--export", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = torch.load(args.run, map_location="cpu", weights_only=True)
    F = LatentF.load(args.run)
    G = pretrained.generator_by_name(args.generator)
    F.check_generator(G)
    pairs = evaluate_f.held_out_pairs(args.generator, args.count, G=G)
    image_f = pretrained.face_estimator() if args.generator == "faceworld" else None
    metrics = evaluate_f.latent_f_metrics(F, pairs["w"], pairs["images"], pairs["detected_landmarks"],
                                          pairs["face_found"], image_f=image_f,
                                          image_size=state["config"]["image_size"])
    if args.generator == "faceworld":
        metrics["style_mixing"] = evaluate_f.mixed_latent_agreement(F, G, image_f)
    metrics["source"] = f"held-out pairs, seed {evaluate_f.EVAL_SEED}"
    print(json.dumps(metrics, indent=2))
    log = {"generator": args.generator, "command": COMMANDS[args.generator], "seed": state["config"]["seed"],
           "config": state["config"], "framing": state["framing"], "split": state["split"],
           "corpus": state["corpus"], "steps": state["step"], "history": thinned(state["history"]),
           "held_out": metrics}
    out = Path(__file__).resolve().parents[1] / "stylerig_lite" / "data" / f"latent_f_{args.generator}.json"
    atomic_write_json(out, log)
    print(f"wrote {out}")
    if args.export:
        keep = {k: v for k, v in metrics.items() if not isinstance(v, dict) or k == "style_mixing"}
        path = pretrained.export(f"latent_f_{args.generator}", args.run, command=COMMANDS[args.generator],
                                 seed=state["config"]["seed"], metrics=keep,
                                 notes=f"evaluate with: stylerig-lite evaluate-f --generator {args.generator} --json")
        print(f"embedded {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
