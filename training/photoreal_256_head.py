"""Issue 20's 256-px output, the other way: stop at 128-px features and fit a linear head by least squares.

    python training/photoreal_256_head.py [--train 80] [--test 16] [--pixels 3000] [--threads 2]
        [--out runs/photoreal_256_head.json]

The photoreal generator (``stylerig_lite.mobilestylegan``) has no intermediate images, so a 256-px output
must be designed. The shipped one (``synthesis(ws, resolution=256)``) runs the last block at half
resolution. The issue suggests another: stop after an earlier block and fit a linear head on its
features. This script measures both sides of that idea:

* **cost**: the blocks up to 128 px (``SynthesisNetwork.features(ws, 128)``) and up to 64 px against the
  1024-px pass and the shipped 256-px path, one image, interleaved, medians: the largest speed-up any
  head on the 128-px (or 64-px) features could give;
* **fidelity**: a head predicting each 2x2 block of the 256-px image (12 numbers: 3 colours x 4 pixels,
  which is the Haar wavelets up to an orthonormal change of basis) from the 256 feature channels at a
  128-px position (1x1) or its 3x3 neighbourhood, fitted by ridge regression on ``--pixels`` random
  positions of each of ``--train`` images, scored by PSNR on ``--test`` other images against the
  4x4 area average of the 1024-px image; beside it, the shipped path's PSNR and those of the exact
  128-px and 64-px images enlarged (every 2x2 or 4x4 block its mean: what a head that gets the
  coarse image right and adds no detail would score).

Latents: seed ``--seed``, truncation alternating 1.0 (the corpus's) and 0.7 (the book's samples). No
weights are shipped: the script is the record of a design that was measured and not taken.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as nnf

from stylerig_lite import pretrained
from stylerig_lite.io_utils import atomic_write_json


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (both clamped to it): peak-to-peak 2."""
    mse = float((image.clamp(-1, 1) - target.clamp(-1, 1)).square().mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def neighbourhood(features: torch.Tensor, k: int) -> torch.Tensor:
    """``[1, C, H, W] -> [H * W, C * k * k + 1]``: each position's k x k neighbourhood and a constant 1."""
    _, _, height, width = features.shape
    x = features if k == 1 else nnf.unfold(features, k, padding=k // 2).view(1, -1, height, width)
    x = x[0].flatten(1).T
    return torch.cat([x, torch.ones(len(x), 1)], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=80)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--pixels", type=int, default=3000, help="random 128-px positions per training image")
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge weight, relative to the Gram diagonal")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--repeats", type=int, default=9, help="timed passes of each kind")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/photoreal_256_head.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G = pretrained.photoreal_generator()
    S = G.synthesis_network
    g = torch.Generator().manual_seed(args.seed)
    start = time.time()

    # ---- cost: the blocks up to 128 px, the 1024-px pass, the shipped 256-px path (interleaved)
    ws = G.mapping(G.sample_z(1, generator=g), truncation_psi=0.7)
    passes = {"features_64": lambda: S.features(ws, 64), "features_128": lambda: S.features(ws, 128),
              "synthesis_1024": lambda: G.synthesis(ws),
              "synthesis_256": lambda: G.synthesis(ws, resolution=256)}
    times = {name: [] for name in passes}
    with torch.no_grad():
        for fn in passes.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in passes.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1e3)
    cost = {f"{name}_ms": round(statistics.median(v), 1) for name, v in times.items()}
    cost["features_128_share_of_1024"] = round(cost["features_128_ms"] / cost["synthesis_1024_ms"], 3)
    cost["largest_speedup_of_a_head_on_128_px"] = round(1 / cost["features_128_share_of_1024"], 2)
    cost["largest_speedup_of_a_head_on_64_px"] = round(cost["synthesis_1024_ms"] / cost["features_64_ms"], 2)
    cost["shipped_256_speedup"] = round(cost["synthesis_1024_ms"] / cost["synthesis_256_ms"], 2)
    print(cost, file=sys.stderr)

    # ---- fidelity
    heads = (1, 3)
    gram = {k: 0.0 for k in heads}
    cross = {k: 0.0 for k in heads}
    test = []
    with torch.no_grad():
        for i in range(args.train + args.test):
            ws = G.mapping(G.sample_z(1, generator=g), truncation_psi=0.7 if i % 2 else 1.0)
            target = nnf.avg_pool2d(G.synthesis(ws), 4)  # [1, 3, 256, 256]
            features = S.features(ws, 128)  # [1, 256, 128, 128]
            blocks = nnf.pixel_unshuffle(target, 2)[0].flatten(1).T  # [128 * 128, 12]
            if i >= args.train:
                test.append((ws, target, features, 0.7 if i % 2 else 1.0))
                continue
            pick = torch.randperm(len(blocks), generator=g)[:args.pixels]
            for k in heads:
                x = neighbourhood(features, k)[pick].double()
                gram[k] = gram[k] + x.T @ x
                cross[k] = cross[k] + x.T @ blocks[pick].double()
            print(f"image {i + 1}/{args.train + args.test}", file=sys.stderr)
        fidelity = {}
        for k in heads:
            a = gram[k]
            weights = torch.linalg.solve(a + args.ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype),
                                         cross[k]).float()
            scores = []
            for _, target, features, _ in test:
                blocks = (neighbourhood(features, k) @ weights).T.reshape(1, 12, 128, 128)
                scores.append(psnr(nnf.pixel_shuffle(blocks, 2), target))
            fidelity[f"head_{k}x{k}"] = {"psnr_db_mean": round(statistics.mean(scores), 2),
                                         "psnr_db_min": round(min(scores), 2), "inputs": int(len(a))}
        for name, make in (("shipped_256_path", lambda ws, t: G.synthesis(ws, resolution=256)),
                           ("exact_128_px_enlarged",
                            lambda ws, t: nnf.interpolate(nnf.avg_pool2d(t, 2), scale_factor=2, mode="nearest")),
                           ("exact_64_px_enlarged",
                            lambda ws, t: nnf.interpolate(nnf.avg_pool2d(t, 4), scale_factor=4, mode="nearest"))):
            scores = [psnr(make(ws, target), target) for ws, target, _, _ in test]
            fidelity[name] = {"psnr_db_mean": round(statistics.mean(scores), 2), "psnr_db_min": round(min(scores), 2),
                              "psnr_db_by_truncation": {str(psi): [round(x, 2) for x, t in zip(scores, test)
                                                                   if t[3] == psi] for psi in (1.0, 0.7)}}
    result = {"command": "python " + " ".join(sys.argv), "seed": args.seed, "train_images": args.train,
              "test_images": args.test, "pixels_per_image": args.pixels, "ridge": args.ridge,
              "threads": args.threads, "cost": cost, "fidelity": fidelity,
              "goal": {"speedup_256_above": 4.0, "psnr_256_db_above": 30.0},
              "generator_sha256": G.generator_sha256, "seconds": round(time.time() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
