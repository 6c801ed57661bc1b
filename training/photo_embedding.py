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

``--response N`` measures the pose RigNet's turn response on embedded faces: N more validation faces
(another draw than the settings' faces) and the real photographs of ``--response-photos`` (Grace
Hopper) are embedded with the default settings and asked for every turn of ``RESPONSE_REQUESTS``, with
the rig applied once, as a difference, and as a difference inside the turn loop (``MODES``); the judge
reads each, and the mode with the smallest median error is the one photos are edited with (chapter 7,
section 5 plots the curves).
``--response-astronaut`` measures the astronaut's curve the same way (the evaluation photo: measured,
never used to choose anything).
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
from stylerig_lite.io_utils import atomic_write_json, sha256_file
from stylerig_lite.judge import Judge
from stylerig_lite.morphable import load_face_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="runs/corpus_ffhq")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default="0.05:0,0.05:0.01,0.05:0.1,0.1:0.01",
                        help="comma-separated LR:W_PRIOR[:LR_FINAL] settings of EmbedConfig to compare "
                             "(LR_FINAL 1, a constant rate, when left out)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--encoder", default=None, help="default: the embedded one")
    parser.add_argument("--pose", default=None, help="the photoreal pose RigNet (default: the embedded one)")
    parser.add_argument("--yaw", type=float, default=15.0)
    parser.add_argument("--astronaut-steps", type=int, default=None, help="default: EmbedConfig's")
    parser.add_argument("--astronaut-prior", type=float, default=None, help="default: EmbedConfig's")
    parser.add_argument("--astronaut-lr", type=float, default=None, help="default: EmbedConfig's")
    parser.add_argument("--response", type=int, default=0, metavar="N",
                        help="measure the pose RigNet's turn response on N embedded validation faces "
                             "(the default EmbedConfig)")
    parser.add_argument("--response-photos", default="grace_hopper",
                        help="comma-separated example photos (photo.EXAMPLES) among the response's validation faces")
    parser.add_argument("--response-astronaut", action="store_true",
                        help="measure the astronaut's turn response too (added to the same section)")
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
        rows = _validation_rows(data, args.seed, args.count)
        faces = [photo.align_face((data.float_images(int(r))[0] + 1) / 2) for r in rows]
        validation = {"rows": [int(data.index[r]) for r in rows], "steps": args.steps, "yaw_deg": args.yaw,
                      "configs": {}}
        for pair in args.configs.split(","):
            lr, prior, *final = (float(x) for x in pair.split(":"))
            final = final[0] if final else 1.0  # constant, as the first sweeps ran
            config = photo.EmbedConfig(steps=args.steps, lr=lr, w_prior=prior, lr_final=final)
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
            label = f"lr {lr:g}, w_prior {prior:g}" + (f", decay to {final:g}" if final != 1.0 else "")
            validation["configs"][label] = {"lr": lr, "w_prior": prior, "lr_final": final,
                                                                        **_summary(per_face)}
            atomic_write_json(args.out.with_suffix(".partial.json"), validation)
        results["validation"] = validation
    chosen = (("steps", args.astronaut_steps), ("w_prior", args.astronaut_prior), ("lr", args.astronaut_lr))
    config = photo.EmbedConfig(**{k: v for k, v in chosen if v is not None})
    if args.response:
        results["turn_response"] = _turn_response(args, nets, judge, photo.EmbedConfig())
        atomic_write_json(args.out, results)
    if args.response_astronaut:
        face = photo.align_face(photo.load_photo(photo.example_photo("astronaut"))[0])
        section = results.setdefault("turn_response", {})
        response = _face_response(nets, judge, face, photo.EmbedConfig())
        chosen = section.get("choice", {}).get("chosen", "delta")
        section["astronaut"] = {**response, "judged": response["judged"][chosen],
                                "judged_by_mode": response["judged"]}
        section["astronaut_command"] = "python " + " ".join(sys.argv)
        atomic_write_json(args.out, results)
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


#: The turns each validation face is asked for (degrees, relative to its own pose), per slider.
#: 0 asks the rig for the face's own pose (the editor skips the rig there; here it is applied, so the
#: curve shows where the rig puts an embedded face before it turns it).
RESPONSE_REQUESTS = {"yaw": (-30, -25, -20, -15, -10, -5, 0, 5, 10, 15, 20, 25, 30),
                     "pitch": (-15, -10, -5, 0, 5, 10, 15)}


def _validation_rows(data, seed: int, count: int) -> torch.Tensor:
    """``count`` corpus rows of the validation split (index < 500) with a detected face, drawn with ``seed``."""
    rows = torch.nonzero((data.index < 500) & data.face_found.bool()).flatten()
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:count]]


#: How an embedded code is edited (``photo.edit_embedding``'s arguments): the rig applied once, as a
#: difference, or as a difference with the turn loop (the pose measured in the drawn frame).
MODES = {"absolute": {"delta": False, "turn_steps": 0}, "delta": {"delta": True, "turn_steps": 0},
         "loop": {"delta": True, "turn_steps": photo.TURN_STEPS}}


def _turn_response(args, nets, judge, config) -> dict:
    """Embed ``args.response`` validation faces and the ``--response-photos``, ask the rig for every turn of
    RESPONSE_REQUESTS in every one of MODES, read the judge; the mode with the smallest median error is chosen."""
    data = CorpusDataset(args.corpus)
    rows = _validation_rows(data, args.seed + 1, args.response)
    photos = [name for name in args.response_photos.split(",") if name]
    faces = [(f"row {int(data.index[r])}", photo.align_face((data.float_images(int(r))[0] + 1) / 2)) for r in rows]
    faces += [(name, photo.align_face(photo.load_photo(photo.example_photo(name))[0])) for name in photos]
    pose_file = Path(args.pose) if args.pose else pretrained.embedded_path("rignet_ffhq_pose")
    readings = {mode: {name: [] for name in RESPONSE_REQUESTS} for mode in MODES}
    started = time.time()
    for label, face in faces:
        response = _face_response(nets, judge, face, config)
        for mode in MODES:
            for name, row in response["judged"][mode].items():
                readings[mode][name].append(row)
        print(f"{label}: yaw {response['judged']}", file=sys.stderr)
    modes, errors = {}, {}
    for mode in MODES:
        curves = {}
        for name, requests in RESPONSE_REQUESTS.items():
            table = torch.tensor(readings[mode][name], dtype=torch.float64)  # [faces, requests]
            curves[name] = {"requests": [float(q) for q in requests],
                            "judged_median": [round(x, 3) for x in table.nanmedian(dim=0).values.tolist()],
                            "judged_by_face": [[round(x, 3) for x in row] for row in readings[mode][name]]}
        modes[mode] = {"curves": curves, "edit_embedding": MODES[mode]}
        errors[mode] = _median_errors(curves)
    chosen = min(MODES, key=lambda mode: errors[mode]["all"])
    return {"command": "python " + " ".join(sys.argv), "rows": [int(data.index[r]) for r in rows], "photos": photos,
            "faces": [label for label, _ in faces], "config": config.__dict__,
            "pose_rignet_sha256": sha256_file(pose_file), "modes": modes,
            "choice": {"rule": "the mode with the smallest median |judged - requested| over every face and "
                               "nonzero request of both sliders", "median_abs_error_deg": errors, "chosen": chosen},
            "curves": modes[chosen]["curves"], "seconds": round(time.time() - started, 1), "threads": args.threads}


def _median_errors(curves: dict) -> dict:
    """Median |judged - requested| (degrees) per slider and over both, nonzero requests, faces with a reading."""
    out, every = {}, []
    for name, curve in curves.items():
        errors = [abs(judged - q) for row in curve["judged_by_face"] for q, judged in zip(curve["requests"], row)
                  if q != 0 and math.isfinite(judged)]
        every += errors
        out[name] = round(float(torch.tensor(errors).median()), 3)
    out["all"] = round(float(torch.tensor(every).median()), 3)
    return out


def _face_response(nets, judge, face, config) -> dict:
    """Embed one aligned face, ask the rig for every turn of RESPONSE_REQUESTS in every one of MODES, read the judge."""
    emb = photo.embed(nets["G"], face.crop, nets["encoder"], latent_f=nets["latent_f"],
                      face_model=nets["face_model"], landmarks=face.landmarks, config=config)
    judged = {mode: {} for mode in MODES}
    for mode, kwargs in MODES.items():
        for name, requests in RESPONSE_REQUESTS.items():
            edits = [photo.edit_embedding(nets, emb.w, {name: float(q) or 1e-4}, **kwargs)[0] for q in requests]
            read = judge.read(torch.cat([emb.image, *edits]), value_range=(-1, 1))[name]
            judged[mode][name] = [round(float(x - read[0]), 3) for x in read[1:]]
    return {"requests": {name: [float(q) for q in requests] for name, requests in RESPONSE_REQUESTS.items()},
            "judged": judged, "embed_psnr_db": round(photo.psnr_db(emb.image, face.crop), 3)}


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
