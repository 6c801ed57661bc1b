"""Benchmarks: ``python -m stylerig_lite.bench [render|world|edit|corpus|rignet|distributed|gan|photoreal|photo|allocator] [--json]``.

Each benchmark is a subcommand registered in ``BENCHMARKS``; without one, all run.

``render``: the full ICT-FaceKit head (26,719 vertices, 52,220 triangles), a batch
of 16 at random small yaw, default camera, at 64, 128 and 256 px. Forward (inference,
no autograd) and forward + backward (gradients w.r.t. vertex positions and
colours), our vectorized rasterizer vs pytorch3d's ``MeshRasterizer``, in the
same process. Times are wall-clock milliseconds per batch: the median of
``--repeats`` (at least 3) runs of each backend, interleaved (ours, pytorch3d, ours,
pytorch3d, ...) after one warm-up run of ours, so that load from other processes falls
on both sides alike. The machine's other load shows up in the
numbers; ``min_ms`` is the least disturbed run and ``cpu_ms`` (process CPU
time, all threads) is the least sensitive to other processes sharing the cores. ``--json`` prints one JSON
object whose top-level ``ours_ms``, ``pytorch3d_ms`` and ``speedup`` are the
64 px forward + backward case; ``cases`` holds every case. Where Numba is installed, each case also
times ``ours_tensor`` (every compiled loop off: ``jit_speedup``) and each forward + backward case
``ours_unfused`` (:mod:`~stylerig_lite.render_jit` off, the other loops on: ``fused_speedup``),
interleaved with the rest.

``edit``: the interactive editor's latency on the CPU, slider change -> new frame (RigNet(s) +
generator + 3DMM preview + the PNGs the widgets show), beside one generator forward pass timed in
the same run (interleaved); ``--json`` gives ``update_ms``, ``generator_ms`` and ``overhead_ratio``
= (update - G) / G. With ipywidgets installed the update is the app's own path: setting a slider
widget's value runs its observer, the frame and the widget updates (``EditorApp`` with
``show_estimate=False`` and rendering in the calling thread); without, the same steps on the
``EditorState``. ``breakdown_ms`` splits the median frame into rigs, generator, preview and PNGs.

``gan``: one ``train-gan`` training step (G step + D step + EMA; the lazy R1 step, one in 16, is not
timed) of the ``cpu64`` preset at ``--batch`` 32 on random 64 px images, one thread, images per
second by wall clock and by process CPU time (the latter least sensitive to other jobs). Each round
runs in a fresh process after ``--warmup`` steps. ``--reference DIR`` (a source tree holding
``stylerig_lite/``, e.g. ``git archive HEAD | tar -x -C DIR``) times that code in alternation with this
one and prints the ratio of the medians; ``--json`` gives ``images_per_s``, ``cpu_images_per_s`` and,
with a reference, ``ref_*`` and ``speedup`` (CPU-time ratio).

``photo``: ``stylerig-lite edit-photo --example astronaut --yaw 15`` end to end (read, align, embed with
``--steps`` steps, edit, paste back; no measurements), beside one embedding step and one 256-px generator
forward pass timed in the same run: ``seconds`` (goal: under 60 s on two cores), ``embed_step_ms``,
``generator_ms`` and ``step_over_generator`` (what a step's backward and loss terms cost in forward passes).

``photoreal``: the photoreal MobileStyleGAN (:mod:`~stylerig_lite.mobilestylegan`), one image (batch 1,
forward, no autograd) at 1024 px: ours vs the OpenVINO runtime in f32 on the same IR, same threads, the
two interleaved ``--repeats`` times; and ours at 256 px (the last block at half resolution). ``--json``
gives ``torch_ms_1024``, ``openvino_ms_1024``, ``ratio`` (ours / OpenVINO, medians), ``torch_ms_256``,
``speedup_256`` (1024 / 256), ``parity_max_abs`` (ours vs OpenVINO, max abs on the [-1, 1] image) and
``psnr_256_db`` (256 px vs the 4x4 area-averaged 1024-px image, mean over ``--seeds`` seeds at
truncation 0.7); ``*_min_ms`` and the load average show how busy the machine was. Without
``random-face`` it reports ``skipped``; without ``openvino``, the OpenVINO fields are None.

``rignet``: one RigNet training step (the siamese losses, backward, Adam) for the FaceWorld generator
at ``--batch`` pairs, the paper's way (the latent F reads ŵ: no generator pass) and the image-F way
(``F(G(ŵ))``), interleaved ``--repeats`` times in the same process on the same pairs (their
preparation, a corpus read or a no-grad G + F pass, is not timed), each with its training
default renderer (the latent path: the decimated face, ``losses.DEFAULT_CELL_CM``; the image
path: the full face region). ``--json`` gives
``latent_f_step_ms``, ``image_f_step_ms`` (medians) and ``speedup`` (image / latent). The embedded
networks when present; otherwise random ones of the same shapes (speed does not depend on the weights).

``allocator``: the photoreal generator with glibc's default allocator settings and with
:func:`~stylerig_lite.devices.keep_freed_memory`, each in a fresh process (``STYLERIG_LITE_MALLOC=default``
for the first), alternating, ``--repeats`` rounds of ``--passes`` passes: 1024 px forward, 256 px forward,
256 px forward and backward (one image, no other change). ``--json`` gives per setting the medians of
the rounds' medians (``default_ms``, ``kept_ms``) and ``speedup`` (default / kept) per pass.

``distributed``: data-parallel speed-up of ``stylerig-lite train-f`` (the embedded F's width and
batch by default) on this machine: 1 process with 1 thread, 1 process with N threads and N processes
with 1 thread each (Gloo on loopback, launched with torchrun's variables), interleaved, ``--repeats``
rounds, on random 64 px images (speed does not depend on the pixels). Steps per second come from the
trainer's own clock after ``--warmup`` steps (no start-up, data loading or process-group set-up);
``--json`` gives the medians and ``speedup`` (N processes over 1 process x 1 thread) and
``speedup_vs_threads`` (over 1 process x N threads, the same cores used by threads). The load average
is recorded: other jobs on the machine lower the N-process figure most.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from stylerig_lite import rasterize_jit
from stylerig_lite.camera import Camera
from stylerig_lite.render import pytorch3d_available, render_mesh
from stylerig_lite.io_utils import load_checkpoint_file
from stylerig_lite.shading import directional_gamma

__all__ = [
    "bench_allocator",
    "bench_corpus",
    "bench_distributed",
    "bench_edit",
    "bench_gan",
    "bench_photoreal",
    "bench_render",
    "bench_rignet",
    "bench_world",
    "BENCHMARKS",
    "main",
]


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


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the ``with`` block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _without_fused_render():
    """render_mesh as before render_jit: the tensor path under autograd, the forward-only loops still on."""
    from stylerig_lite import render_jit

    usable = render_jit.usable
    render_jit.usable = lambda *tensors: False
    try:
        yield
    finally:
        render_jit.usable = usable


def bench_render(args: argparse.Namespace) -> dict:
    batch = args.batch
    vertices, faces, albedo, light = _head_batch(batch)
    have_p3d = pytorch3d_available()
    if not have_p3d:
        print("pytorch3d is not importable: timing our renderer only", file=sys.stderr)
    cases: Dict[str, dict] = {}
    parity: Dict[str, dict] = {}
    jit = rasterize_jit.available()  # "ours" then runs the compiled loops; "ours_tensor" (all off) is timed beside it
    for size in args.sizes:
        camera = Camera(image_size=size)
        for mode in ("forward", "forward_backward"):
            name = f"{size}px_{mode}"
            case: dict = {"image_size": size, "batch": batch, "mode": mode}
            backends = ["ours"] + (["ours_tensor"] if jit else [])
            if jit and mode == "forward_backward":
                backends.append("ours_unfused")  # the previous release: tensor-op normals, shading, interpolation
            if have_p3d and not (args.quick and size > 64):
                backends.append("pytorch3d")
            else:
                case["pytorch3d_ms"] = None

            def run(backend, camera=camera, mode=mode):
                if backend == "ours_tensor":  # our renderer with the compiled loops off (tensor ops only)
                    with _environment(STYLERIG_LITE_RASTERIZER="torch"):
                        return run("ours")
                if backend == "ours_unfused":  # render_jit's fused forward and backward off, the rest on
                    with _without_fused_render():
                        return run("ours")
                if mode == "forward":
                    with torch.no_grad():
                        return render_mesh(vertices, faces, albedo, light, camera, backend=backend)
                v = vertices.clone().requires_grad_()
                a = albedo.clone().requires_grad_()
                out = render_mesh(v, faces, a, light, camera, backend=backend)
                out.image.sum().backward()
                return out

            # Interleaved (ours, pytorch3d, ours, pytorch3d, ...) so that the machine's other load falls
            # on both sides alike; ours is warmed up once first (pytorch3d takes seconds per run).
            print(f"  {name:<24} {' / '.join(backends)} x {args.repeats} ...", file=sys.stderr, flush=True)
            for backend in backends[:2]:
                run(backend)
            times: Dict[str, List[float]] = {b: [] for b in backends}
            cpu: Dict[str, List[float]] = {b: [] for b in backends}
            for _ in range(args.repeats):
                for backend in backends:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    run(backend)
                    times[backend].append((time.perf_counter() - start) * 1e3)
                    cpu[backend].append((time.process_time() - start_cpu) * 1e3)
            for backend in backends:
                case[f"{backend}_ms"] = round(statistics.median(times[backend]), 2)
                case[f"{backend}_min_ms"] = round(min(times[backend]), 2)
                case[f"{backend}_cpu_ms"] = round(statistics.median(cpu[backend]), 2)
                case[f"{backend}_runs"] = len(times[backend])
            p3d = case.get("pytorch3d_ms")
            case["speedup"] = round(p3d / case["ours_ms"], 1) if p3d else None
            case["speedup_cpu"] = round(case["pytorch3d_cpu_ms"] / case["ours_cpu_ms"], 1) if p3d else None
            case["jit_speedup"] = round(case["ours_tensor_ms"] / case["ours_ms"], 2) if jit else None
            if "ours_unfused_ms" in case:
                case["fused_speedup"] = round(case["ours_unfused_ms"] / case["ours_ms"], 2)
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
        "compiled_loops": jit,  # projection and z-buffer (rasterize_jit), normals and shading (shading_jit)
        "jit_speedup": headline.get("jit_speedup"),
        "fused_speedup": headline.get("fused_speedup"),  # render_jit's gradient loops against the tensor backward
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
        if case.get("ours_tensor_ms"):
            print(f"{'':<24}every compiled loop off {case['ours_tensor_ms']:.1f} ms: the loops are "
                  f"{case['jit_speedup']:.1f}x faster")
        if case.get("ours_unfused_ms"):
            print(f"{'':<24}render_jit off (tensor-op shading and interpolation under autograd) "
                  f"{case['ours_unfused_ms']:.1f} ms: {case['fused_speedup']:.1f}x")
    for size, p in result["parity"].items():
        print(f"parity {size}: mask IoU {p['mask_iou']:.4f}, image mean |diff| {p['image_mean_abs_diff']:.2e}, "
              f"same face {p['same_face_fraction']:.4f}")


def bench_world(args: argparse.Namespace) -> dict:
    """FaceWorld sampling throughput (render + scene + labels), batches of ``--batch``."""
    from stylerig_lite.world import FaceWorld

    world = FaceWorld()
    jit = rasterize_jit.available()
    # With Numba, the same batches again, interleaved, with the compiled loops off (projection, z-buffer,
    # normals, shading): the same images, bit for bit.
    variants = {"ours": {}, "tensor_path": {"STYLERIG_LITE_RASTERIZER": "torch"}} if jit else {"ours": {}}
    times: Dict[str, List[float]] = {k: [] for k in variants}
    for name, env in variants.items():
        with _environment(**env):
            world.sample(args.batch, seed=0)  # warm-up
    for r in range(args.repeats):
        for name, env in variants.items():
            with _environment(**env):
                start = time.perf_counter()
                world.sample(args.batch, seed=1 + r)
                times[name].append(time.perf_counter() - start)
    seconds = statistics.median(times["ours"])
    result = {
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "seconds_per_batch": round(seconds, 4),
        "images_per_s": round(args.batch / seconds, 2),
        "triangles": int(world.faces.shape[0]),
        "compiled_loops": jit,  # projection and z-buffer (rasterize_jit), normals and shading (shading_jit)
    }
    if jit:
        result["images_per_s_tensor_path"] = round(args.batch / statistics.median(times["tensor_path"]), 2)
    return result


def _print_world(result: dict) -> None:
    print(f"FaceWorld: {result['images_per_s']} images/s ({result['batch']} per batch, "
          f"{result['seconds_per_batch']} s per batch, {result['triangles']:,} triangles, {result['threads']} threads)")
    if result.get("images_per_s_tensor_path"):
        print(f"  with the compiled loops off (tensor-op projection, z-buffer, normals, shading): "
              f"{result['images_per_s_tensor_path']} images/s")


def _add_world_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches (default 3)")


def bench_corpus(args: argparse.Namespace) -> dict:
    """(w, I_w) corpus throughput: mapping + synthesis + F + shard writing, end to end.

    Uses the embedded G and F when they exist; otherwise randomly initialised networks of the
    same architecture (the 'cpu64' StyleGAN2 and F's default config), which cost the same.
    """
    import tempfile

    from stylerig_lite import pretrained
    from stylerig_lite.corpus import make_corpus

    if getattr(args, "generator", "faceworld") == "ffhq":
        args.batch, args.count = args.batch or 8, args.count or 48
        return _bench_corpus_photoreal(args)
    args.batch, args.count = args.batch or 64, args.count or 256
    try:
        G, F, weights = pretrained.generator(), pretrained.face_estimator(), "embedded"
    except (pretrained.WeightsError, FileNotFoundError):
        from stylerig_lite.reconstruction import ReconstructionNet
        from stylerig_lite.stylegan2 import Generator

        G, F, weights = Generator("cpu64", seed=0).eval(), ReconstructionNet().eval(), "random (no embedded weights yet)"
    with tempfile.TemporaryDirectory() as tmp:
        make_corpus(tmp + "/warmup", args.batch, generator=G, estimator=F, batch=args.batch, progress=False)
        start = time.perf_counter()
        make_corpus(tmp + "/corpus", args.count, generator=G, estimator=F, batch=args.batch, progress=False)
        seconds = time.perf_counter() - start
    return {
        "count": args.count,
        "batch": args.batch,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(args.count / seconds, 2),
        "num_ws": int(G.num_ws),
        "w_dim": int(G.w_dim),
        "weights": weights,
        "threads": torch.get_num_threads(),
    }


def _bench_corpus_photoreal(args: argparse.Namespace) -> dict:
    """``bench corpus --generator ffhq``: photoreal pairs per second with landmarks, 1 and 2 processes.

    Each case runs ``stylerig-lite make-corpus --generator ffhq`` as a child (under ``torchrun``
    for more than one process) with ``cores // processes`` threads per process, on the same
    machine, one after the other, alternating the cases for ``--repeats`` rounds. The rate is the
    manifest's ``seconds_per_1000`` (rank 0's own shards: generator, landmarks and writing,
    without the start-up that loads the networks), times the number of processes.
    """
    import subprocess
    import tempfile

    cores = args.cores or os.cpu_count() or 1
    runs: Dict[int, List[float]] = {p: [] for p in args.processes}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    # this interpreter's package, whether or not its scripts are on PATH (a venv not activated)
    cli = [sys.executable, "-m", "stylerig_lite.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for processes in args.processes:
                threads = max(1, cores // processes)
                out = f"{tmp}/p{processes}_r{r}"
                command = [*cli, "make-corpus", "--generator", "ffhq", "--count", str(args.count * processes),
                           "--out", out, "--batch", str(args.batch), "--shard-size", str(args.batch),
                           "--threads", str(threads), "--quiet"]
                if processes > 1:
                    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc-per-node={processes}", "--module", *command[2:]]
                print(f"  {processes} process(es) x {threads} thread(s), round {r + 1} ...", file=sys.stderr,
                      flush=True)
                subprocess.run(command, check=True, env={**env, "OMP_NUM_THREADS": str(threads)},
                               stdout=subprocess.DEVNULL)
                with open(f"{out}/manifest.json") as f:
                    manifest = json.load(f)
                runs[processes].append(processes * 1000.0 / manifest["seconds_per_1000"])
    rates = {p: statistics.median(v) for p, v in runs.items()}
    base = rates.get(1)
    return {
        "benchmark": "corpus", "generator": "ffhq", "image_size": 256,
        "pairs_per_s": {str(p): round(v, 3) for p, v in rates.items()},
        "speedup_vs_1": {str(p): round(v / base, 2) for p, v in rates.items()} if base else None,
        "runs": {str(p): [round(x, 3) for x in v] for p, v in runs.items()},
        "pairs_per_process": args.count, "batch": args.batch, "cores": cores,
    }


def _print_corpus(result: dict) -> None:
    if result.get("generator") == "ffhq":
        rates = ", ".join(f"{p} process(es) {v} pairs/s" for p, v in result["pairs_per_s"].items())
        print(f"corpus (photoreal, 256 px, landmarks, {result['cores']} cores): {rates}; "
              f"speed-up {result['speedup_vs_1']}")
        return
    print(f"corpus: {result['pairs_per_s']} pairs/s ({result['count']} pairs in {result['seconds']} s, batch "
          f"{result['batch']}, W+ {result['num_ws']}x{result['w_dim']}, {result['weights']} weights, "
          f"{result['threads']} threads)")


def _add_corpus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=None,
                        help="pairs to sample (default 256; ffhq: 48 per process)")
    parser.add_argument("--batch", type=int, default=None, help="images per G/F batch (default 64; 8 for ffhq)")
    parser.add_argument("--generator", choices=("faceworld", "ffhq"), default="faceworld",
                        help="faceworld (default: in this process) or ffhq: make-corpus children, 1 and 2 processes")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="ffhq: process counts to compare (default 1 2)")
    parser.add_argument("--cores", type=int, default=None, help="ffhq: cores to share out (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="ffhq: rounds of the cases (default 1)")


_GAN_STEP_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
import stylerig_lite
from stylerig_lite.train_gan import GANTrainer, TrainConfig
batch, warmup, steps = (int(a) for a in sys.argv[1:4])
source = lambda B, g: torch.rand(B, 3, 64, 64, generator=g) * 2 - 1
trainer = GANTrainer("cpu64", TrainConfig(batch_size=batch), source)
for _ in range(warmup):  # step 0 includes the lazy R1 step
    trainer.train_step()
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(steps):
    trainer.train_step()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall": batch * steps / wall, "cpu": batch * steps / cpu, "file": stylerig_lite.__file__}))
"""


def _record_load(result: dict) -> None:
    """Put the one-minute load average into ``result['load_average']`` (where the OS reports one)."""
    try:
        result["load_average"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass


def bench_gan(args: argparse.Namespace) -> dict:
    """Training-step throughput of train-gan (cpu64), optionally beside a reference source tree."""
    import subprocess
    from pathlib import Path

    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        raise SystemExit("need --batch, --steps, --repeats >= 1 and --warmup >= 0")
    here = str(Path(__file__).resolve().parent.parent)
    trees = {"ours": here}
    if args.reference:
        ref = str(Path(args.reference).resolve())
        if not (Path(ref) / "stylerig_lite" / "__init__.py").exists():
            raise SystemExit(f"--reference {ref}: no stylerig_lite/ package there")
        trees["ref"] = ref

    def once(tree: str) -> dict:
        env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", _GAN_STEP_CHILD, str(args.batch), str(args.warmup),
                              str(args.steps)], cwd=tree, env=env, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if not result["file"].startswith(tree):
            raise RuntimeError(f"timed {result['file']} instead of the code in {tree}")
        return result

    runs: Dict[str, List[dict]] = {name: [] for name in trees}
    for _ in range(args.repeats):  # interleaved, so slow phases of the machine hit both
        for name, tree in trees.items():
            runs[name].append(once(tree))
    result = {"preset": "cpu64", "batch": args.batch, "steps": args.steps, "repeats": args.repeats, "threads": 1}
    for name, prefix in (("ours", ""), ("ref", "ref_")):
        if name in runs:
            result[prefix + "images_per_s"] = round(statistics.median(r["wall"] for r in runs[name]), 2)
            result[prefix + "cpu_images_per_s"] = round(statistics.median(r["cpu"] for r in runs[name]), 2)
    if "ref" in runs:
        result["reference"] = trees["ref"]
        result["speedup"] = round(result["cpu_images_per_s"] / result["ref_cpu_images_per_s"], 3)
        result["speedup_wall"] = round(result["images_per_s"] / result["ref_images_per_s"], 3)
    _record_load(result)
    return result


def _print_gan(result: dict) -> None:
    line = (f"train-gan step (cpu64, batch {result['batch']}, 1 thread): {result['images_per_s']} images/s wall, "
            f"{result['cpu_images_per_s']} images/CPU-s")
    if "speedup" in result:
        line += (f"; reference {result['ref_images_per_s']} / {result['ref_cpu_images_per_s']}: "
                 f"x{result['speedup']} (CPU time), x{result['speedup_wall']} (wall)")
    if "load_average" in result:
        line += f" [load {result['load_average']}]"
    print(line)


def _add_gan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32, the preset's)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, R1 included (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each a fresh process (default 3)")
    parser.add_argument("--reference", default=None,
                        help="source tree with stylerig_lite/ to time in alternation (e.g. a git archive of HEAD)")


def _paper_shaped_rig(num_ws: int, w_dim: int, latent: int = 32, seed: int = 0):
    """A random RigNet-shaped stand-in: per-layer encoder w_i -> l_i (32), decoder [l_i, p] -> d_i, w + d.

    Only for timing when no trained RigNet is available: it costs what the paper's RigNet costs.
    """
    from stylerig_lite.morphable import NUM_PARAMS

    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(num_ws, w_dim, latent, generator=g) / w_dim ** 0.5
    dec = torch.randn(num_ws, latent + NUM_PARAMS, w_dim, generator=g) * 0.01

    def rig(w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        codes = torch.einsum("bnd,ndl->bnl", w, enc)  # [B, num_ws, 32]
        inputs = torch.cat([codes, p[:, None, :].expand(-1, num_ws, -1)], dim=2)  # [B, num_ws, 32 + 196]
        return w + torch.einsum("bnk,nkd->bnd", inputs, dec)

    return rig


def bench_edit(args: argparse.Namespace) -> dict:
    """Editor latency: slider change -> new frame (RigNet + generator + 3DMM preview + PNGs), vs one G pass.

    The embedded networks when they exist, else random networks of the same size (recorded in
    ``networks``): latency depends on the architecture, not on the weights. The yaw slider is
    the headline (a pose change keeps the cached face shape; jawOpen, moved in the warm-up, stays
    edited, so two rigs apply); ``expression_update_ms`` moves jawOpen, which also recomputes the
    preview's shape and normals. ``path`` says what was timed (the app, or the state without widgets).
    """
    from stylerig_lite import editing, pretrained
    from stylerig_lite.morphable import load_face_model
    from stylerig_lite.reconstruction import ReconstructionNet
    from stylerig_lite.stylegan2 import Generator

    networks = {}
    if getattr(args, "generator", "faceworld") == "ffhq":
        return _bench_edit_photoreal(args)
    try:
        G = pretrained.generator()
        networks["generator"] = "embedded"
    except (pretrained.WeightsError, FileNotFoundError):
        G = Generator("cpu64", seed=0).eval().requires_grad_(False)
        networks["generator"] = "random cpu64 (no embedded weights yet)"
    try:
        F = pretrained.face_estimator()
        networks["estimator"] = "embedded"
    except (pretrained.WeightsError, FileNotFoundError):
        F = ReconstructionNet().eval().requires_grad_(False)
        networks["estimator"] = "random default config"
    rigs = {}
    for component in editing.RIG_COMPONENTS:
        try:
            rigs[component] = pretrained.rignet(component)
            networks[f"rig_{component}"] = "embedded"
        except (AttributeError, KeyError, pretrained.WeightsError, FileNotFoundError):
            try:  # an untrained RigNet of the right size costs what a trained one costs
                from stylerig_lite.rignet import RigNet, RigNetConfig

                rigs[component] = RigNet(RigNetConfig.for_generator(G, component)).eval().requires_grad_(False)
                networks[f"rig_{component}"] = "untrained RigNet (no embedded weights yet)"
            except ImportError:
                rigs[component] = _paper_shaped_rig(G.num_ws, G.w_dim, seed=len(rigs))
                networks[f"rig_{component}"] = "paper-shaped random stand-in"
    face_model = load_face_model(progress=False)
    try:  # the app itself: a slider widget's value -> its observer -> frame -> the widgets' PNGs
        if args.without_widgets:
            raise ImportError("--without-widgets")
        import ipywidgets  # noqa: F401

        app = editing.EditorApp(G, rigs, F, face_model, seed=0, preview_size=args.preview_size,
                                show_estimate=False, background=False)
        state, path = app.state, "EditorApp: slider widget value -> frame -> widget PNGs"

        def move(name: str, value: float) -> editing.Frame:
            before = app._scheduler.rendered
            app.sliders[name].value = value  # what a browser slider event does (then _on_slider, request_frame, ...)
            if app._scheduler.rendered != before + 1:
                raise RuntimeError(f"setting slider {name} to {value} did not render one frame")
            return app.last_frame
    except ImportError:  # no widgets: the same steps without them
        app = None
        state = editing.EditorState(G, rigs, F, face_model, seed=0, preview_size=args.preview_size)
        path = "EditorState: set_slider -> compute_frame -> frame_pngs (" + (
            "--without-widgets" if args.without_widgets else "ipywidgets not installed") + ")"

        def move(name: str, value: float) -> editing.Frame:
            state.set_slider(name, value)
            frame = state.compute_frame(estimate=False)
            start = time.perf_counter()
            editing.frame_pngs(frame)
            frame.timings_ms["display_ms"] = (time.perf_counter() - start) * 1e3
            return frame

    yaw0 = min(max(state.slider_value("yaw"), -45.0), 45.0)  # both values inside the slider's range

    def update(name: str, values: List[float]):
        counter = iter(range(10**9))

        def run():
            # Alternate between two values so that every update is a real change.
            return move(name, values[next(counter) % 2])
        return run

    frames: List[editing.Frame] = []

    def yaw_update():
        frames.append(update_yaw())

    update_yaw = update("yaw", [yaw0 + 10.0, yaw0 - 10.0])
    w = state.w

    def generator_pass():  # the editor's own generator call (stylegan2.frozen for our StyleGAN2)
        with torch.no_grad():
            return state._synthesize(w)

    def eager_pass():  # the reference: the network as it is defined
        with torch.no_grad():
            return G.synthesis(w, noise_mode="const")

    all_threads = None
    if state._frozen is not None:  # the frozen graph on every thread, beside the editor's one-thread graph
        from stylerig_lite.stylegan2.frozen import FrozenSynthesis

        all_threads = FrozenSynthesis(G.synthesis, threads=None)

    # Interleave the measurements so that background load hits them alike.
    gen_times, eager_times, upd_times, exp_times, all_times = [], [], [], [], []
    update_jaw = update("jawOpen", [0.6, 0.1])
    for fn in (generator_pass, eager_pass, yaw_update, update_jaw):  # warm-up
        fn()
    if all_threads is not None:
        with torch.no_grad():
            all_threads(w)  # traces
            all_threads(w)  # runs frozen
    frames.clear()
    for _ in range(args.repeats):
        gen_times.append(_time(generator_pass, 1, 0)["ms"])
        eager_times.append(_time(eager_pass, 1, 0)["ms"])
        upd_times.append(_time(yaw_update, 1, 0)["ms"])
        if all_threads is not None:
            with torch.no_grad():
                all_times.append(_time(lambda: all_threads(w), 1, 0)["ms"])
    state.reset()
    if app is not None:
        app._sync_sliders()
    for _ in range(max(3, args.repeats // 4)):
        exp_times.append(_time(update_jaw, 1, 0)["ms"])
    breakdown = {key: round(statistics.median(f.timings_ms[key] for f in frames), 3)
                 for key in ("rig_ms", "generator_ms", "render_ms", "display_ms")}
    update_ms, generator_ms = statistics.median(upd_times), statistics.median(gen_times)
    overhead = (update_ms - generator_ms) / generator_ms
    return {
        "benchmark": "edit",
        "update_ms": round(update_ms, 3),
        "generator_ms": round(generator_ms, 3),
        "overhead_ratio": round(overhead, 3),
        "update_min_ms": round(min(upd_times), 3),
        "generator_min_ms": round(min(gen_times), 3),
        "eager_generator_ms": round(statistics.median(eager_times), 3),
        "frozen_generator": bool(getattr(state._frozen, "fast", False)),
        "frozen_threads": getattr(state._frozen, "threads", None),
        "frozen_all_threads_ms": round(statistics.median(all_times), 3) if all_times else None,
        "expression_update_ms": round(statistics.median(exp_times), 3),
        "breakdown_ms": breakdown,
        "goal": {"update_ms_below": 10.0, "overhead_ratio_below": 0.25,
                 "update_met": update_ms < 10.0, "overhead_met": overhead < 0.25},
        "image_size": int(G.img_resolution),
        "num_ws": int(G.num_ws),
        "w_dim": int(G.w_dim),
        "preview_size": args.preview_size,
        "preview_points": state.preview.num_points,
        "networks": networks,
        "path": path,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _bench_edit_photoreal(args: argparse.Namespace) -> dict:
    """``bench edit --generator ffhq``: the photoreal editor (latent F, its RigNets, 256-px frames), state path.

    ``frame_ms``: jaw slider change -> new 256-px frame (RigNet + generator + preview + PNG encoding), ``generator_ms``:
    one 256-px generator pass, interleaved; ``overhead_ratio`` = (frame - generator) / generator.
    """
    from stylerig_lite import editing, pretrained
    from stylerig_lite.corpus import synthesize
    from stylerig_lite.morphable import load_face_model

    G = pretrained.photoreal_generator()
    rigs = {c: pretrained.rignet(c, generator="ffhq") for c in pretrained.PHOTOREAL_RIGS}
    state = editing.EditorState(G, rigs, pretrained.latent_f("ffhq"), load_face_model(progress=False), seed=0,
                                preview_size=args.preview_size, image_size=256)
    # the jaw slider: a RigNet, the generator and the preview per frame
    values, counter, frames = [0.6, 0.1], iter(range(10**9)), []

    def frame_update():
        state.set_slider("jawOpen", values[next(counter) % 2])
        frame = state.compute_frame(estimate=False)
        editing.frame_pngs(frame)
        frames.append(frame)

    def generator_pass():
        with torch.no_grad():
            return synthesize(G, state.w, image_size=256)

    for fn in (generator_pass, frame_update):
        fn()
    frames.clear()
    gen_times, frame_times = [], []
    for _ in range(args.repeats):
        gen_times.append(_time(generator_pass, 1, 0)["ms"])
        frame_times.append(_time(frame_update, 1, 0)["ms"])
    frame_ms, generator_ms = statistics.median(frame_times), statistics.median(gen_times)
    overhead = (frame_ms - generator_ms) / generator_ms
    return {"benchmark": "edit", "generator": "ffhq", "image_size": 256, "frame_ms": round(frame_ms, 2),
            "generator_ms": round(generator_ms, 2), "overhead_ratio": round(overhead, 3),
            "breakdown_ms": {key: round(statistics.median(f.timings_ms[key] for f in frames), 2)
                             for key in ("rig_ms", "generator_ms", "render_ms")},
            "goal": {"frame_ms_below": 250.0, "overhead_ratio_below": 0.25, "frame_met": frame_ms < 250.0,
                     "overhead_met": overhead < 0.25},
            "repeats": args.repeats, "threads": torch.get_num_threads()}


def _print_edit(result: dict) -> None:
    if result.get("generator") == "ffhq":
        print(f"edit (photoreal, 256 px, {result['threads']} threads): slider -> frame {result['frame_ms']:.1f} ms, "
              f"one generator pass {result['generator_ms']:.1f} ms, overhead {result['overhead_ratio']:.0%} "
              f"(goals: <= 250 ms, <= 25%); breakdown {result['breakdown_ms']}")
        return
    b = result["breakdown_ms"]
    print(f"edit: {result['image_size']} px generator ({result['num_ws']} x {result['w_dim']} W+), "
          f"3DMM preview {result['preview_size']} px ({result['preview_points']:,} points), "
          f"{result['threads']} threads, median of {result['repeats']}")
    print(f"  slider (yaw) -> new frame   {result['update_ms']:8.2f} ms   (min {result['update_min_ms']:.2f})")
    kind = "frozen (stylegan2.frozen)" if result.get("frozen_generator") else "eager"
    print(f"  one generator forward pass  {result['generator_ms']:8.2f} ms   (min {result['generator_min_ms']:.2f}; "
          f"{kind}; the eager network: {result['eager_generator_ms']:.2f} ms)")
    print(f"  edit overhead               {100 * result['overhead_ratio']:8.1f} %    "
          f"(rigs {b['rig_ms']:.2f} ms, 3DMM preview {b['render_ms']:.2f} ms, PNGs {b['display_ms']:.2f} ms)")
    print(f"  slider (jawOpen) -> frame   {result['expression_update_ms']:8.2f} ms   (recomputes the preview's shape)")
    goal = result["goal"]
    print(f"  goal: < {goal['update_ms_below']:.0f} ms {'met' if goal['update_met'] else 'NOT met'}, "
          f"overhead < {100 * goal['overhead_ratio_below']:.0f}% {'met' if goal['overhead_met'] else 'NOT met'}")
    print(f"  measured: {result['path']}")
    print(f"  networks: {result['networks']}")


def _add_edit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=40, help="timed slider updates (default 40)")
    parser.add_argument("--generator", choices=("faceworld", "ffhq"), default="faceworld",
                        help="faceworld (default) or ffhq: the photoreal editor at 256 px (frame_ms, generator_ms)")
    parser.add_argument("--preview-size", type=int, default=40, help="3DMM preview size in pixels (default 40)")
    parser.add_argument("--without-widgets", action="store_true",
                        help="time the editor state and the PNGs only, not the app's widgets (as without ipywidgets)")


def bench_distributed(args: argparse.Namespace) -> dict:
    """Steps per second of a training command: 1 process x 1 thread, 1 process x N threads, N processes x 1 thread."""
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    n = args.processes
    job = args.job
    defaults = {"f": (64, 40, 10), "gan": (32, 8, 2)}[job]
    args.batch, args.steps, args.warmup = (value if value is not None else default
                                           for value, default in zip((args.batch, args.steps, args.warmup), defaults))
    steps = args.steps
    if not 0 < args.warmup < steps or (job == "gan" and steps % args.warmup):
        raise SystemExit("need 0 < --warmup < --steps (train-gan: --steps a multiple of --warmup)")

    def make_data(folder: Path) -> List[str]:
        """The data options of the command (train-f: random 64 px images in datasets.render_shards' format)."""
        if job == "gan":
            return ["--data", "blobs", "--preset", "cpu64"]
        import numpy as np

        from stylerig_lite.world import WorldConfig, config_hash

        folder.mkdir()
        g = np.random.default_rng(0)
        (folder / "manifest.json").write_text(json.dumps({"count": args.images, "seed": 0, "shard_size": args.images,
                                                          "image_size": 64, "world_hash": config_hash(WorldConfig())}))
        np.savez(folder / "shard_00000.npz", images=g.integers(0, 256, (args.images, 64, 64, 3), dtype=np.uint8),
                 params=(0.3 * g.standard_normal((args.images, 196))).astype(np.float32),
                 landmarks=(16 + 32 * g.random((args.images, 68, 2))).astype(np.float32))
        return ["--data-dir", str(folder), "--images", str(args.images), "--width", str(args.width)]

    def command(out: Path, data_options: List[str], threads: int) -> List[str]:
        if job == "gan":  # a log line (and checkpoint) after the warm-up steps and every as many steps after
            return ["train-gan", "--out", str(out), *data_options, "--batch", str(args.batch), "--images",
                    str(steps * args.batch), "--checkpoint-every", str(args.warmup * args.batch), "--sample-every",
                    str(10**12), "--threads", str(threads), "--no-resume", "--no-progress"]
        return ["train-f", "--out", str(out), *data_options, "--batch", str(args.batch), "--steps", str(steps),
                "--val-images", "0", "--eval-every", "0", "--threads", str(threads), "--fresh", "--quiet"]

    def steady_rate(out: Path) -> float:
        """Steps per second after the warm-up steps, from the trainer's own clock."""
        if job == "gan":  # log.jsonl: images_per_s since the start at each checkpoint
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            times = [(e["step"], e["images_seen"] / e["images_per_s"]) for e in log]
        else:
            times = [(e["step"], e["elapsed_s"]) for e in load_checkpoint_file(out, "training checkpoint")["train"]["history"]]
        (s0, t0), (s1, t1) = next(t for t in times if t[0] >= args.warmup), times[-1]
        return (s1 - s0) / (t1 - t0)

    def launch(out: Path, data_options: List[str], processes: int, threads: int) -> float:
        argv = [sys.executable, "-m", "stylerig_lite.cli", *command(out, data_options, threads)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        procs = []
        for rank in range(processes):  # what torchrun would set (without its agent process)
            rank_env = dict(env)
            if processes > 1:
                rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=port)
            procs.append(subprocess.Popen(argv, env=rank_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        results = [(proc.wait(), proc.stderr.read()) for proc in procs]
        if any(code for code, _ in results):
            raise RuntimeError(f"{argv[3]} with {processes} process(es) failed: {results}")
        return steady_rate(out)

    configs = {"1 process x 1 thread": (1, 1), f"1 process x {n} threads": (1, n), f"{n} processes x 1 thread": (n, 1)}
    rates: Dict[str, List[float]] = {name: [] for name in configs}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data_options = make_data(Path(tmp) / "faces")
        for repeat in range(args.repeats):  # interleaved, so that a change in the machine's load hits all alike
            for name, (processes, threads) in configs.items():
                rates[name].append(launch(Path(tmp) / f"run{repeat}_{processes}_{threads}", data_options, processes, threads))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["1 process x 1 thread"]
    what = (f"train-gan, cpu64 preset, blob images, global batch {args.batch}" if job == "gan"
            else f"train-f, width {args.width}, global batch {args.batch}, random 64 px images")
    return {
        "job": f"{what}, {steps} steps ({args.warmup} untimed)",
        "processes": n,
        "steps_per_s": {name: [round(v, 3) for v in values] for name, values in rates.items()},
        "median_steps_per_s": {name: round(v, 3) for name, v in medians.items()},
        "speedup": round(medians[f"{n} processes x 1 thread"] / base, 3),
        "speedup_threads": round(medians[f"1 process x {n} threads"] / base, 3),
        "speedup_vs_threads": round(medians[f"{n} processes x 1 thread"] / medians[f"1 process x {n} threads"], 3),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }


def _print_distributed(result: dict) -> None:
    print(f"distributed: {result['job']}; {result['cpu_count']} CPUs, load average {result['load_average_before'][0]} "
          f"before / {result['load_average_after'][0]} after")
    for name, median in result["median_steps_per_s"].items():
        runs = ", ".join(f"{v:.3g}" for v in result["steps_per_s"][name])
        print(f"  {name:<24} {median:7.3g} steps/s (runs: {runs})")
    n = result["processes"]
    print(f"  over 1 process x 1 thread: {n} processes {result['speedup']:.2f}x, {n} threads {result['speedup_threads']:.2f}x "
          f"(processes over threads: {result['speedup_vs_threads']:.2f}x)")


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", choices=("f", "gan"), default="f", help="train-f (default) or train-gan (cpu64 preset)")
    parser.add_argument("--processes", type=int, default=2, help="data-parallel processes (default 2)")
    parser.add_argument("--width", type=int, default=16, help="train-f: F's first-stage width (default 16, the embedded F's)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: 64 for F, 32 for the GAN, as trained)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 40 for F, 8 for the GAN)")
    parser.add_argument("--warmup", type=int, default=None, help="steps not timed (default: 10 for F, 2 for the GAN)")
    parser.add_argument("--images", type=int, default=512, help="train-f: random training images (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the three set-ups (default 2)")


def bench_photoreal(args: argparse.Namespace) -> dict:
    """MobileStyleGAN: ms per 1024-px image, ours vs OpenVINO f32 (interleaved), ours at 256 px, parity, PSNR."""
    import torch.nn.functional as F

    from stylerig_lite.mobilestylegan import FileIntegrityError, find_data_dir, load_mobilestylegan

    try:
        G = load_mobilestylegan()
    except FileIntegrityError as error:
        print(f"photoreal: {error}", file=sys.stderr)
        return {"benchmark": "photoreal", "skipped": str(error)}
    threads = torch.get_num_threads()
    compiled = None
    try:
        import openvino
    except ImportError:
        print("photoreal: openvino is not installed: timing ours only", file=sys.stderr)
    else:
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(find_data_dir() / "SynthesisNetwork.xml")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    G.requires_grad_(False)
    ws = G.mapping(G.sample_z(1, generator=torch.Generator().manual_seed(0)), truncation_psi=0.7)
    w = ws[:, 0].numpy()
    runs = {"torch_1024": lambda: G.synthesis(ws), "torch_256": lambda: G.synthesis(ws, resolution=256)}
    if compiled is not None:
        runs["openvino_1024"] = lambda: compiled([w])[compiled.output(0)]
    load_before = os.getloadavg()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    with torch.no_grad():
        outputs = {name: run() for name, run in runs.items()}  # warm-up
        for _ in range(args.repeats):  # interleaved, so that the machine's other load hits all alike
            for name, run in runs.items():
                times[name].append(_time(run, 1, 0)["ms"])
        psnr = []
        for seed in range(args.seeds):
            ws_seed = G.mapping(G.sample_z(1, generator=torch.Generator().manual_seed(100 + seed)), truncation_psi=0.7)
            target = F.avg_pool2d(G.synthesis(ws_seed), 4)
            mse = float((G.synthesis(ws_seed, resolution=256) - target).square().mean())
            psnr.append(10 * math.log10(4.0 / mse))  # peak-to-peak 2 on [-1, 1] images
    # Forward + backward to the ws at 256 px (what the photo embedding runs every step): the styled 1x1
    # convs' own backward against autograd's (the same forward), interleaved.
    from stylerig_lite.mobilestylegan.networks import autograd_backward

    def fwd_bwd(reference: bool) -> None:
        with autograd_backward() if reference else contextlib.nullcontext():
            wp = ws.detach().clone().requires_grad_(True)
            G.synthesis(wp, resolution=256).square().mean().backward()

    backward_runs = {"fwd_bwd_256": lambda: fwd_bwd(False), "fwd_bwd_256_autograd": lambda: fwd_bwd(True)}
    for name, run in backward_runs.items():
        run()  # warm-up
        times[name] = []
    for _ in range(args.repeats):
        for name, run in backward_runs.items():
            times[name].append(_time(run, 1, 0)["ms"])
    median = {name: statistics.median(v) for name, v in times.items()}
    ov = median.get("openvino_1024")
    parity = (float(abs(outputs["torch_1024"].numpy() - outputs["openvino_1024"]).max())
              if compiled is not None else None)
    return {
        "benchmark": "photoreal",
        "torch_ms_1024": round(median["torch_1024"], 1),
        "openvino_ms_1024": round(ov, 1) if ov else None,
        "ratio": round(median["torch_1024"] / ov, 2) if ov else None,
        "torch_ms_256": round(median["torch_256"], 1),
        "speedup_256": round(median["torch_1024"] / median["torch_256"], 2),
        "fwd_bwd_256_ms": round(median["fwd_bwd_256"], 1),
        "fwd_bwd_256_autograd_ms": round(median["fwd_bwd_256_autograd"], 1),
        "parity_max_abs": parity,
        "psnr_256_db": round(statistics.mean(psnr), 2),
        "psnr_256_db_min": round(min(psnr), 2),
        "min_ms": {name: round(min(v), 1) for name, v in times.items()},
        "goal": {"ratio_below": 2.0, "speedup_256_above": 4.0, "psnr_256_db_above": 30.0},
        "repeats": args.repeats,
        "threads": threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "generator_sha256": G.generator_sha256,
        "torch": torch.__version__,
        "openvino": getattr(openvino, "__version__", None) if compiled is not None else None,
    }


def _print_photoreal(result: dict) -> None:
    if "skipped" in result:
        print(f"photoreal: skipped ({result['skipped']})")
        return
    print(f"photoreal: MobileStyleGAN, batch 1, {result['threads']} threads, median of {result['repeats']}, "
          f"load average {result['load_average_before'][0]} before / {result['load_average_after'][0]} after")
    ov = result["openvino_ms_1024"]
    print(f"  1024 px  ours {result['torch_ms_1024']:8.1f} ms   OpenVINO f32 "
          + (f"{ov:8.1f} ms   ours / OpenVINO {result['ratio']:.2f}x" if ov else "not installed"))
    print(f"   256 px  ours {result['torch_ms_256']:8.1f} ms   ({result['speedup_256']:.2f}x cheaper than 1024 px), "
          f"PSNR vs the downsampled 1024-px image {result['psnr_256_db']:.1f} dB (min {result['psnr_256_db_min']:.1f})")
    print(f"   256 px  forward + backward {result['fwd_bwd_256_ms']:.1f} ms (with autograd's backward of the styled "
          f"1x1 convs: {result['fwd_bwd_256_autograd_ms']:.1f} ms)")
    if result["parity_max_abs"] is not None:
        print(f"  parity with OpenVINO f32: max abs {result['parity_max_abs']:.1e} on [-1, 1] images")


def _add_photoreal_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, each ours 1024, ours 256, OpenVINO (default 5)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the 256-px PSNR (default 3)")


def bench_photo(args: argparse.Namespace) -> dict:
    """edit-photo on the astronaut end to end, and one embedding step vs one generator pass (interleaved)."""
    from stylerig_lite import photo

    networks = photo.default_networks(components=("pose",))
    G, encoder = networks["G"], networks["encoder"]
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = photo.edit_photo(photo.example_photo("astronaut"), {"yaw": 15.0}, networks=networks,
                              config=photo.EmbedConfig(steps=args.steps), measure=False)
    seconds = time.perf_counter() - started
    crop, landmarks = result.aligned.crop, result.aligned.landmarks
    one_step = photo.EmbedConfig(steps=1)
    step_ms, g_ms = [], []
    w = result.embedding.w
    for _ in range(args.repeats):
        step_ms.append(_time(lambda: photo.embed(G, crop, encoder, latent_f=networks["latent_f"],
                                                 face_model=networks["face_model"], landmarks=landmarks,
                                                 config=one_step), 1, 0)["ms"])
        with torch.no_grad():
            g_ms.append(_time(lambda: G.synthesis(w, noise_mode="const", resolution=256), 1, 0)["ms"])
    step, g = statistics.median(step_ms), statistics.median(g_ms)
    return {"benchmark": "photo", "seconds": round(seconds, 1), "steps": args.steps,
            "embed_seconds": result.metrics["embed_seconds"], "embed_step_ms": round(step, 1),
            "generator_ms": round(g, 1), "step_over_generator": round(step / g, 2),
            "goal": {"seconds_below": 60.0}, "threads": torch.get_num_threads(), "repeats": args.repeats,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def _print_photo(result: dict) -> None:
    print(f"photo: edit-photo --example astronaut --yaw 15, {result['steps']} embedding steps, {result['threads']} "
          f"threads, load average {result['load_average_before'][0]} before / {result['load_average_after'][0]} after")
    print(f"  end to end {result['seconds']:.1f} s (embedding {result['embed_seconds']:.1f} s; goal < 60 s)")
    print(f"  one embedding step {result['embed_step_ms']:.0f} ms = {result['step_over_generator']:.2f} x one "
          f"256-px generator pass ({result['generator_ms']:.0f} ms)")


def _add_photo_args(parser: argparse.ArgumentParser) -> None:
    from stylerig_lite.photo import EmbedConfig

    parser.add_argument("--steps", type=int, default=EmbedConfig.steps, help="embedding steps (default: edit-photo's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed embedding steps and generator passes (default 3)")


def bench_rignet(args: argparse.Namespace) -> dict:
    """A RigNet training step through the latent F vs through G and the image F, same pairs, interleaved."""
    from stylerig_lite import pretrained
    from stylerig_lite.face_render import default_camera
    from stylerig_lite.latent_f import LatentF, LatentFConfig
    from stylerig_lite.losses import DEFAULT_CELL_CM, RenderLoss
    from stylerig_lite.morphable import load_face_model
    from stylerig_lite.rignet import LossWeights, RigNet, RigNetConfig, RigSample, describe, freeze, rig_losses
    from stylerig_lite.train_rignet import TrainConfig, make_optimizer

    G = freeze(pretrained.generator())
    F_image = freeze(pretrained.face_estimator())
    try:
        F_latent = freeze(pretrained.latent_f("faceworld"))
        latent_source = "embedded"
    except (pretrained.WeightsError, KeyError, FileNotFoundError):
        F_latent = freeze(LatentF(LatentFConfig.for_generator(G)))
        latent_source = "random (no embedded latent F)"
    model = load_face_model(progress=False)
    size = F_image.config.image_size
    render = RenderLoss(model, default_camera(size))  # the image F's (full face region)
    coarse = RenderLoss(model, default_camera(size), mesh_cell_cm=DEFAULT_CELL_CM)  # the latent path's default
    B = args.batch
    with torch.no_grad():
        z = torch.randn(2 * B, G.z_dim, generator=torch.Generator().manual_seed(0))
        w = G.mapping(z, None)
        image_sample = describe(G, F_image, w)
        latent_sample = RigSample(w, image_sample.image, F_latent(w), image_sample.landmarks)

    def halves(sample: RigSample):
        return (RigSample(sample.w[:B], sample.image[:B], sample.params[:B], sample.landmarks[:B]),
                RigSample(sample.w[B:], sample.image[B:], sample.params[B:], sample.landmarks[B:]))

    cases = {"latent_f": (F_latent, None, halves(latent_sample), coarse),
             "image_f": (F_image, G, halves(image_sample), render)}
    nets = {}
    for name in cases:
        torch.manual_seed(0)
        nets[name] = RigNet(RigNetConfig.for_generator(G, "pose"))
    optimizers = {name: make_optimizer(net, TrainConfig()) for name, net in nets.items()}  # train-rignet's

    def step(name: str) -> None:
        F, G_used, (sample_w, sample_v), loss_fn = cases[name]
        loss, _ = rig_losses(nets[name], G_used, F, loss_fn, sample_w, sample_v, LossWeights())
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    for name in cases:  # warm-up
        step(name)
    times: Dict[str, List[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name in cases:
            start = time.perf_counter()
            step(name)
            times[name].append((time.perf_counter() - start) * 1e3)
    latent_ms, image_ms = statistics.median(times["latent_f"]), statistics.median(times["image_f"])
    return {"batch_pairs": B, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "latent_f": latent_source, "render_size": size,
            "latent_f_step_ms": round(latent_ms, 2), "image_f_step_ms": round(image_ms, 2),
            "speedup": round(image_ms / latent_ms, 2), "goal_speedup": 10.0,
            "latent_f_min_ms": round(min(times["latent_f"]), 2), "image_f_min_ms": round(min(times["image_f"]), 2)}


def _print_rignet(result: dict) -> None:
    print(f"rignet: one pose-RigNet step, {result['batch_pairs']} pairs (both directions), FaceWorld, "
          f"{result['threads']} threads, median of {result['repeats']}")
    print(f"  latent F (no G in the loop) {result['latent_f_step_ms']:8.1f} ms")
    print(f"  image F, F(G(w_hat))        {result['image_f_step_ms']:8.1f} ms   -> {result['speedup']:.1f}x "
          f"(goal >= {result['goal_speedup']:.0f}x)")


def _add_rignet_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (default 8, the cpu preset's)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps of each (default 7)")


_ALLOCATOR_CHILD = r"""
import json, statistics, sys, time
import torch
from stylerig_lite import devices, pretrained
threads, passes = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
G = pretrained.photoreal_generator()
ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), truncation_psi=0.7)
w = ws.clone().requires_grad_(True)

def backward():
    G.synthesis(w, resolution=256).square().mean().backward()

def timed(fn):
    fn()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)

out = {"kept": devices.keep_freed_memory()}
with torch.no_grad():
    out["forward_1024"] = timed(lambda: G.synthesis(ws))
    out["forward_256"] = timed(lambda: G.synthesis(ws, resolution=256))
out["forward_backward_256"] = timed(backward)
print(json.dumps(out))
"""


def bench_allocator(args: argparse.Namespace) -> dict:
    """The photoreal generator with glibc's default allocator and with devices.keep_freed_memory, alternating."""
    import subprocess

    if args.repeats < 1 or args.passes < 1:
        raise SystemExit("need --repeats >= 1 and --passes >= 1")
    from stylerig_lite.mobilestylegan import FileIntegrityError, check_ir_files, find_data_dir

    try:  # fail here, with the message, rather than in a child process
        check_ir_files(find_data_dir(), check_sha256=False)
    except FileIntegrityError as error:
        print(f"allocator: {error}", file=sys.stderr)
        return {"benchmark": "allocator", "skipped": str(error)}
    threads = args.threads or torch.get_num_threads()
    settings = {"default": {"STYLERIG_LITE_MALLOC": "default"}, "kept": {"STYLERIG_LITE_MALLOC": ""}}
    rounds: Dict[str, List[dict]] = {name: [] for name in settings}
    for _ in range(args.repeats):  # alternating fresh processes: load on the machine hits both alike
        for name, extra in settings.items():
            out = subprocess.run([sys.executable, "-c", _ALLOCATOR_CHILD, str(threads), str(args.passes)],
                                 env=dict(os.environ, **extra), capture_output=True, text=True, check=True)
            rounds[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not all(r["kept"] for r in rounds["kept"]) or any(r["kept"] for r in rounds["default"]):
        raise RuntimeError("the allocator could not be set as asked (not glibc?): nothing to compare")
    result: Dict[str, object] = {"benchmark": "allocator", "threads": threads, "repeats": args.repeats,
                                 "passes": args.passes}
    for key in ("forward_1024", "forward_256", "forward_backward_256"):
        default = statistics.median(r[key] for r in rounds["default"])
        kept = statistics.median(r[key] for r in rounds["kept"])
        result[key] = {"default_ms": round(default, 1), "kept_ms": round(kept, 1),
                       "speedup": round(default / kept, 3)}
    _record_load(result)
    return result


def _print_allocator(result: dict) -> None:
    if "skipped" in result:
        print(f"allocator: skipped ({result['skipped']})")
        return
    print(f"allocator: photoreal generator, one image, {result['threads']} threads, "
          f"medians of {result['repeats']} alternating processes x {result['passes']} passes")
    for key in ("forward_1024", "forward_256", "forward_backward_256"):
        row = result[key]
        print(f"  {key:22s} default {row['default_ms']:7.1f} ms   kept {row['kept_ms']:7.1f} ms   "
              f"x{row['speedup']:.2f}")


def _add_allocator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each two fresh processes (default 3)")
    parser.add_argument("--passes", type=int, default=7, help="timed passes of each kind per process (default 7)")


# name -> (run, print, help, add arguments)
BENCHMARKS: Dict[str, Tuple[Callable[[argparse.Namespace], dict], Callable[[dict], None], str, Callable]] = {
    "render": (bench_render, _print_render_table, "our rasterizer vs pytorch3d on the full ICT head", None),
    "world": (bench_world, _print_world, "FaceWorld images per second", _add_world_args),
    "edit": (bench_edit, _print_edit, "editor latency: slider -> frame vs one generator pass", _add_edit_args),
    "corpus": (bench_corpus, _print_corpus, "(w, I_w) corpus pairs per second (G + F + shard writing)", _add_corpus_args),
    "distributed": (bench_distributed, _print_distributed, "train-f speed-up: N processes (torch.distributed) vs 1",
                    _add_distributed_args),
    "gan": (bench_gan, _print_gan, "train-gan step images/s (cpu64), optionally vs a reference tree", _add_gan_args),
    "rignet": (bench_rignet, _print_rignet, "RigNet training step: latent F vs image F (G in the loop)",
               _add_rignet_args),
    "photoreal": (bench_photoreal, _print_photoreal, "MobileStyleGAN 1024 px: ours vs OpenVINO f32, and our 256 px",
                  _add_photoreal_args),
    "photo": (bench_photo, _print_photo, "edit-photo end to end, and one embedding step vs one generator pass",
              _add_photo_args),
    "allocator": (bench_allocator, _print_allocator,
                  "photoreal generator: glibc's default allocator vs devices.keep_freed_memory",
                  _add_allocator_args),
}


def _add_render_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="image sizes (default 64 128 256)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each backend, interleaved (default 3; medians are reported)")
    parser.add_argument("--quick", action="store_true", help="skip pytorch3d above 64 px (it takes minutes at 256)")


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
