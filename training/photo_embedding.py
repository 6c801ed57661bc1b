"""Choose the photo embedding's settings on validation faces, then measure the astronaut with them.

    python training/photo_embedding.py --corpus runs/corpus_ffhq [--count 3] [--configs LR:PRIOR,...] [--steps 60]
        [--encoder runs/encoder/encoder.pt] [--pose runs/pose_rec30/rignet_pose.pt] [--out stylerig_lite/data/photo_embedding.json]

Validation faces: generated images of the photoreal corpus's validation split (corpus index < 500,
never trained on by the encoder), aligned from dlib's landmarks exactly as a photo is. For each weight
of the editability prior and learning rate (``EmbedConfig.w_prior``, ``lr``; ``--configs``) every face is embedded for ``--steps`` steps; the
pixel term's history gives PSNR against the step count, and at the end the code is edited by +15°
yaw and the judge reads the change. The astronaut (``--example``) is the evaluation photo: it is
measured once, with the settings chosen here, as ``stylerig-lite edit-photo --example astronaut
--yaw 15 --json`` does. Writes ``stylerig_lite/data/photo_embedding.json`` (chapter 7 reads it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from stylerig_lite import photo, pretrained
from stylerig_lite.corpus import CorpusDataset, synthesize
from stylerig_lite.identity import IdentityMeter
from stylerig_lite.io_utils import atomic_write_json
from stylerig_lite.judge import Judge
from stylerig_lite.morphable import load_face_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="runs/corpus_ffhq")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default="0.05:0,0.05:0.01,0.05:0.1,0.1:0.01",
                        help="comma-separated LR:W_PRIOR pairs of EmbedConfig to compare")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--encoder", default=None, help="default: the embedded one")
    parser.add_argument("--pose", default=None, help="the photoreal pose RigNet (default: the embedded one)")
    parser.add_argument("--yaw", type=float, default=15.0)
    parser.add_argument("--astronaut-steps", type=int, default=None, help="default: EmbedConfig's")
    parser.add_argument("--astronaut-prior", type=float, default=None, help="default: EmbedConfig's")
    parser.add_argument("--astronaut-lr", type=float, default=None, help="default: EmbedConfig's")
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--skip-astronaut", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("stylerig_lite/data/photo_embedding.json"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G = pretrained.photoreal_generator()
    nets = {"G": G, "encoder": pretrained.photo_encoder(args.encoder), "latent_f": pretrained.latent_f("ffhq"),
            "face_model": load_face_model(progress=False),
            "rigs": {"pose": pretrained.rignet("pose", path=args.pose, generator="ffhq")}}
    judge, meter = Judge(), IdentityMeter()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["command"] = "python " + " ".join(sys.argv)
    if not args.skip_validation:
        data = CorpusDataset(args.corpus)
        rows = torch.nonzero((data.index < 500) & data.face_found.bool()).flatten()
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed))[:args.count]]
        faces = [photo.align_face((data.float_images(int(r))[0] + 1) / 2) for r in rows]
        validation = {"rows": [int(data.index[r]) for r in rows], "steps": args.steps, "yaw_deg": args.yaw,
                      "configs": {}}
        for pair in args.configs.split(","):
            lr, prior = (float(x) for x in pair.split(":"))
            config = photo.EmbedConfig(steps=args.steps, lr=lr, w_prior=prior)
            per_face = []
            for face in faces:
                started = time.time()
                emb = photo.embed(G, face.crop, nets["encoder"], latent_f=nets["latent_f"],
                                  face_model=nets["face_model"], landmarks=face.landmarks, config=config)
                per_face.append(_edit_and_read(nets, emb, face, args.yaw, judge, meter)
                                | {"psnr_by_step": [round(10 * math.log10(4 / m), 3) for m in emb.history["pixel"]],
                                   "seconds": round(time.time() - started, 1)})
                print(f"lr {lr}, prior {prior}: {per_face[-1]['embed_psnr_db']:.2f} dB, yaw change "
                      f"{per_face[-1]['yaw_change_deg']:.1f}", file=sys.stderr)
            validation["configs"][f"lr {lr:g}, w_prior {prior:g}"] = {"lr": lr, "w_prior": prior,
                                                                        **_summary(per_face)}
            atomic_write_json(args.out.with_suffix(".partial.json"), validation)
        results["validation"] = validation
    chosen = (("steps", args.astronaut_steps), ("w_prior", args.astronaut_prior), ("lr", args.astronaut_lr))
    config = photo.EmbedConfig(**{k: v for k, v in chosen if v is not None})
    if args.skip_astronaut:
        atomic_write_json(args.out, results)
        return
    started = time.time()
    result = photo.edit_photo(photo.example_photo("astronaut"), {"yaw": args.yaw}, config=config, networks=nets,
                              paste=True, measure=True)
    results["astronaut"] = {"config": config.__dict__, **result.metrics, "notes": result.notes,
                            "psnr_by_step": [round(10 * math.log10(4 / m), 3) for m in result.embedding.history["pixel"]],
                            "wall_seconds": round(time.time() - started, 1), "threads": args.threads}
    atomic_write_json(args.out, results)
    print(json.dumps(results["astronaut"], indent=1))


def _edit_and_read(nets, emb, face, yaw, judge, meter) -> dict:
    edited, _ = photo.edit_embedding(nets, emb.w, {"yaw": yaw})
    readings = judge.read(torch.cat([emb.image, edited]), value_range=(-1, 1))
    return {"embed_psnr_db": photo.psnr_db(emb.image, face.crop),
            "start_psnr_db": photo.psnr_db(synthesize(nets["G"], emb.start, photo.CROP_SIZE), face.crop),
            "identity_distance": float(meter.distance(face.crop, emb.image)[0]),
            "identity_distance_edit": float(meter.distance(face.crop, edited)[0]),
            "yaw_change_deg": float(readings["yaw"][1] - readings["yaw"][0])}


def _summary(per_face: list) -> dict:
    def median(key: str) -> float:
        values = torch.tensor([f[key] for f in per_face], dtype=torch.float64)
        return float(values.nanmedian())

    keys = ("embed_psnr_db", "start_psnr_db", "identity_distance", "identity_distance_edit", "yaw_change_deg")
    steps = len(per_face[0]["psnr_by_step"])
    curve = [float(torch.tensor([f["psnr_by_step"][i] for f in per_face]).median()) for i in range(steps)]
    return {**{f"{k}_median": median(k) for k in keys}, "psnr_by_step_median": curve, "faces": per_face}


if __name__ == "__main__":
    main()
