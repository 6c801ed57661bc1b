"""Benchmarks: ``python -m stylerig_lite.bench [render] [--json] [--quick]``.

Each benchmark is a subcommand registered in ``BENCHMARKS``; without one, all run.

``render``: the full ICT-FaceKit head (26,719 vertices, 52,220 triangles), a batch
of 16 at random small yaw, default camera, at 64 and 128 px. Forward (inference,
no autograd) and forward + backward (gradients w.r.t. vertex positions and
colours), our vectorized rasterizer vs pytorch3d's ``MeshRasterizer``, in the
same process. Times are wall-clock milliseconds per batch: the median of
``--repeats`` runs after one warm-up run (pytorch3d: one run, no warm-up,
because it takes tens of seconds). The machine's other load shows up in the
numbers; ``min_ms`` is the least disturbed run and ``cpu_ms`` (process CPU
time, all threads) is the least sensitive to other processes sharing the cores. ``--json`` prints one JSON
object whose top-level ``ours_ms``, ``pytorch3d_ms`` and ``speedup`` are the
64 px forward + backward case; ``cases`` holds every case.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from stylerig_lite.camera import Camera
from stylerig_lite.render import pytorch3d_available, render_mesh
from stylerig_lite.shading import directional_gamma


# ----------------------------------------------------------------------------------------- the mesh
def _load_head() -> Tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's mesh: the ICT neutral head ``(vertices [V, 3] cm, faces [F, 3] long)``, all parts."""
    from stylerig_lite.morphable import load_face_model

    model = load_face_model(progress=False)
    return model.neutral.clone(), model.faces.clone()


def _head_batch(batch: int, seed: int = 0):
    """Posed vertices [B, V, 3], albedo [B, V, 3], SH light [B, 27] for the benchmark."""
    vertices, faces = _load_head()
    g = torch.Generator().manual_seed(seed)
    yaw = (torch.rand(batch, generator=g) * 2 - 1) * math.radians(20.0)
    c, s = torch.cos(yaw), torch.sin(yaw)
    rotation = torch.zeros(batch, 3, 3)
    rotation[:, 0, 0], rotation[:, 0, 2], rotation[:, 1, 1] = c, s, 1.0
    rotation[:, 2, 0], rotation[:, 2, 2] = -s, c
    posed = vertices[None] @ rotation.transpose(1, 2)
    skin = torch.tensor([0.80, 0.62, 0.52])
    albedo = (skin + 0.05 * torch.randn(batch, len(vertices), 3, generator=g)).clamp(0, 1)
    light = directional_gamma(torch.tensor([0.3, 0.3, 1.0]), 0.7, 0.35, batch_size=batch)
    return posed, faces, albedo, light


# ---------------------------------------------------------------------------------------- timing
def _time(fn: Callable[[], object], repeats: int, warmup: int) -> Dict[str, float]:
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return {"ms": statistics.median(times), "min_ms": min(times), "cpu_ms": statistics.median(cpu), "runs": len(times)}


def bench_render(args: argparse.Namespace) -> dict:
    batch = args.batch
    vertices, faces, albedo, light = _head_batch(batch)
    have_p3d = pytorch3d_available()
    if not have_p3d:
        print("pytorch3d is not importable: timing our renderer only", file=sys.stderr)
    cases: Dict[str, dict] = {}
    parity: Dict[str, dict] = {}
    for size in args.sizes:
        camera = Camera(image_size=size)
        for mode in ("forward", "forward_backward"):
            name = f"{size}px_{mode}"
            case: dict = {"image_size": size, "batch": batch, "mode": mode}
            for backend in ("ours", "pytorch3d"):
                if backend == "pytorch3d" and (not have_p3d or (args.quick and size > 64)):
                    case["pytorch3d_ms"] = None
                    continue

                def run(backend=backend, camera=camera, mode=mode):
                    if mode == "forward":
                        with torch.no_grad():
                            return render_mesh(vertices, faces, albedo, light, camera, backend=backend)
                    v = vertices.clone().requires_grad_()
                    a = albedo.clone().requires_grad_()
                    out = render_mesh(v, faces, a, light, camera, backend=backend)
                    out.image.sum().backward()
                    return out

                repeats, warmup = (args.repeats, 1) if backend == "ours" else (args.p3d_repeats, 0)
                print(f"  {name:<24} {backend:<10} ...", file=sys.stderr, flush=True)
                timing = _time(run, repeats, warmup)
                case[f"{backend}_ms"] = round(timing["ms"], 2)
                case[f"{backend}_min_ms"] = round(timing["min_ms"], 2)
                case[f"{backend}_cpu_ms"] = round(timing["cpu_ms"], 2)
                case[f"{backend}_runs"] = timing["runs"]
            p3d = case.get("pytorch3d_ms")
            case["speedup"] = round(p3d / case["ours_ms"], 1) if p3d else None
            case["speedup_cpu"] = round(case["pytorch3d_cpu_ms"] / case["ours_cpu_ms"], 1) if p3d else None
            cases[name] = case
        if have_p3d and not (args.quick and size > 64):
            with torch.no_grad():
                ours = render_mesh(vertices[:2], faces, albedo[:2], light[:2], camera)
                ref = render_mesh(vertices[:2], faces, albedo[:2], light[:2], camera, backend="pytorch3d")
            a, b = ours.mask > 0, ref.mask > 0
            parity[f"{size}px"] = {
                "mask_iou": float((a & b).sum()) / float((a | b).sum()),
                "image_mean_abs_diff": float((ours.image - ref.image).abs().mean()),
                "same_face_fraction": float((ours.face_index == ref.face_index).float().mean()),
            }
    headline = cases.get("64px_forward_backward", {})
    p3d_version = None
    if have_p3d:
        import pytorch3d

        p3d_version = pytorch3d.__version__
    return {
        "benchmark": "render",
        "ours_ms": headline.get("ours_ms"),
        "pytorch3d_ms": headline.get("pytorch3d_ms"),
        "speedup": headline.get("speedup"),
        "speedup_cpu": headline.get("speedup_cpu"),
        "headline_case": "64px_forward_backward",
        "cases": cases,
        "parity": parity,
        "mesh": {"vertices": int(vertices.shape[1]), "faces": int(faces.shape[0])},
        "batch": batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pytorch3d": p3d_version,
        "quick": bool(args.quick),
    }


def _print_render_table(result: dict) -> None:
    print(f"render: ICT head ({result['mesh']['vertices']:,} vertices, {result['mesh']['faces']:,} triangles), "
          f"batch {result['batch']}, torch threads {result['threads']}, torch {result['torch']}, "
          f"pytorch3d {result['pytorch3d'] or 'not installed'}")
    print("wall ms = median wall-clock per batch (min); cpu ms = median process CPU time (all threads)")
    print(f"{'case':<24}{'ours wall (min)':>18}{'ours cpu':>10}{'pytorch3d wall':>16}{'p3d cpu':>10}"
          f"{'speedup':>9}{'(cpu)':>7}")
    for name, case in result["cases"].items():
        ours = f"{case['ours_ms']:.1f} ({case['ours_min_ms']:.1f})"
        if case.get("pytorch3d_ms"):
            p3d, p3d_cpu = f"{case['pytorch3d_ms']:.0f}", f"{case['pytorch3d_cpu_ms']:.0f}"
            speed, speed_cpu = f"{case['speedup']:.0f}x", f"{case['speedup_cpu']:.0f}x"
        else:
            p3d, p3d_cpu, speed, speed_cpu = "skipped", "-", "-", "-"
        print(f"{name:<24}{ours:>18}{case['ours_cpu_ms']:>10.1f}{p3d:>16}{p3d_cpu:>10}{speed:>9}{speed_cpu:>7}")
    for size, p in result["parity"].items():
        print(f"parity {size}: mask IoU {p['mask_iou']:.4f}, image mean |diff| {p['image_mean_abs_diff']:.2e}, "
              f"same face {p['same_face_fraction']:.4f}")


def bench_world(args: argparse.Namespace) -> dict:
    """FaceWorld sampling throughput (render + scene + labels), batches of ``--batch``."""
    from stylerig_lite.world import FaceWorld

    world = FaceWorld()
    world.sample(args.batch, seed=0)  # warm-up
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        world.sample(args.batch, seed=1 + r)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "seconds_per_batch": round(seconds, 4),
        "images_per_s": round(args.batch / seconds, 2),
        "triangles": int(world.faces.shape[0]),
    }


def _print_world(result: dict) -> None:
    print(f"FaceWorld: {result['images_per_s']} images/s ({result['batch']} per batch, "
          f"{result['seconds_per_batch']} s per batch, {result['triangles']:,} triangles, {result['threads']} threads)")


def _add_world_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches (default 3)")


# name -> (run, print, help, add arguments)
BENCHMARKS: Dict[str, Tuple[Callable[[argparse.Namespace], dict], Callable[[dict], None], str, Callable]] = {
    "render": (bench_render, _print_render_table, "our rasterizer vs pytorch3d on the full ICT head", None),
    "world": (bench_world, _print_world, "FaceWorld images per second", _add_world_args),
}


def _add_render_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes (default 64 128)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ours (default 5)")
    parser.add_argument("--p3d-repeats", type=int, default=1, help="timed runs of pytorch3d (default 1)")
    parser.add_argument("--quick", action="store_true", help="skip pytorch3d above 64 px (it takes ~80 s at 128)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylerig_lite.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="benchmark")
    for name, (_, _, help_text, add_args) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object")
        p.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch threads")
        (add_args or _add_render_args)(p)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.benchmark is None:  # `make bench`: every benchmark with its defaults
        names = list(BENCHMARKS)
    else:
        names = [args.benchmark]
    results = {}
    for name in names:
        run, show, _, add_args = BENCHMARKS[name]
        if args.benchmark is None:  # each benchmark with its own defaults
            defaults = argparse.ArgumentParser()
            (add_args or _add_render_args)(defaults)
            for key, value in vars(defaults.parse_args([])).items():
                setattr(args, key, value)
        results[name] = run(args)
        if not args.json:
            show(results[name])
    if args.json:
        print(json.dumps(results[names[0]] if len(names) == 1 else results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
