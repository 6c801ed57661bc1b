"""Data-parallel training (stylerig_lite.distributed): results do not depend on the number of processes.

Two CPU processes on Gloo over loopback run the real commands (``python -m stylerig_lite.cli ...``)
with torchrun's environment variables set by hand (one run goes through ``torchrun`` itself), next
to the same commands in one process (this one). For each trainer:

* 2 processes for k steps give the parameters of 1 process for k steps (float tolerance);
* that 2-process checkpoint resumed by 1 process, and the 1-process checkpoint resumed by 2
  processes, both end where 1 process running all the way ends (resume after a change of N);

``make-corpus`` from 2 processes equals the single-process corpus array for array, and a killed
(or frozen) process makes the survivor fail with a clean error within the timeout instead of hanging.
In-process unit tests check the pieces: row sharding keeps minibatch-stddev groups whole, sharded
random draws equal the rows of the global draws, global-batch BatchNorm.

Tiny presets and a handful of steps; every subprocess has a hard timeout, and the process-group
timeout is short (``STYLERIG_LITE_DIST_TIMEOUT``), so a bug shows up as a failure, never a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stylerig_lite import cli, distributed, reconstruction, stylegan2
from stylerig_lite.distributed import BatchShard, SyncBatchNorm2d, shard_range, shard_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
multiprocess = pytest.mark.slow  # starts 2 processes (5-20 s each); deselect with -m 'not slow'
WORLD = 2
DIST_TIMEOUT_S = 20  # a collective waits this long for a silent peer
FROZEN_TIMEOUT_S = 10  # ... in the test that freezes a peer
RUN_TIMEOUT_S = 240  # a whole multi-process command (generous: the CI machine may be busy)
ATOL, RTOL = 2e-5, 1e-4  # parameters after a few steps: float rounding of a batch split, through Adam
OUTLIER_FRACTION = 1e-2  # ... except entries whose gradient cancels to noise (see assert_close_states)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


# ----------------------------------------------------------------------------------------------
# Launching processes.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(timeout: float = DIST_TIMEOUT_S, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1", **{distributed.TIMEOUT_ENV: str(timeout)})
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def _start_ranks(argv: list, world: int = WORLD, timeout: float = DIST_TIMEOUT_S) -> list:
    """``world`` processes of ``stylerig-lite argv`` with torchrun's variables (loopback, a free port)."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = _env(timeout, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "stylerig_lite.cli", *map(str, argv)], env=env, cwd=REPO_ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs: list, timeout: float = RUN_TIMEOUT_S) -> list:
    """Wait for every process (killing all of them past ``timeout``); ``[(returncode, stdout, stderr)]``."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        details = [proc.communicate() for proc in procs]
        pytest.fail(f"distributed run did not finish within {timeout} s: {details}")
    return results


def run_ranks(argv: list, world: int = WORLD) -> list:
    results = _finish(_start_ranks(argv, world))
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, f"rank {rank} of {world} exited with {code}:\n{out}\n{err}"
    return results


def run_torchrun(argv: list, world: int = WORLD) -> None:
    """The command under ``torchrun --standalone`` (its own rendezvous on a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "stylerig_lite.cli", *map(str, argv)]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


def run_single(argv: list) -> None:
    """The same command in this process (no process group)."""
    assert cli.main([str(a) for a in argv]) == 0


def assert_close_states(a: dict, b: dict, what: str, lr: float) -> None:
    """``a`` and ``b`` agree: integers exactly, logged losses closely, parameters entry by entry.

    Adam (like AdamW) divides each gradient entry by its own running magnitude, so an entry whose
    gradient cancels to rounding noise (landmark errors whose signs balance over the batch, say)
    takes a step of up to about the learning rate in a direction set by that noise. Such an entry
    differs between any two runs whose sums round differently: one process with 1 or 2 threads, or
    N processes. So all but a few entries must agree to float tolerance, and those few by at most
    a few learning-rate steps. Measured for F after 6 steps: about 60 of 104k entries (0.06 %),
    as many as between 1 and 2 threads in one process; per-rank BatchNorm statistics instead of
    the global batch's move 62 % of them. GAN and RigNet: none.
    """
    assert a.keys() == b.keys(), what
    far, total, report = 0, 0, []
    for name in a:
        x, y = a[name], b[name]
        if not torch.is_floating_point(x):
            assert torch.equal(x, y), f"{what}: {name}"
            continue
        x, y = x.double(), y.double()
        if name.startswith("log."):  # global-batch means of the logged losses
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=lambda m: f"{what}: {name}: {m}")
            continue
        diff = (x - y).abs()
        bad = diff > ATOL + RTOL * y.abs()
        far += int(bad.sum())
        total += x.numel()
        if bad.any():
            report.append(f"{name}: {int(bad.sum())} of {x.numel()} entries, max {float(diff.max()):.3g}")
            assert float(diff.max()) <= 10 * lr, f"{what}: {name} differs by {float(diff.max()):.3g} (lr {lr})"
    assert far <= OUTLIER_FRACTION * total, f"{what}: {far} of {total} entries differ: {report}"


# ----------------------------------------------------------------------------------------------
# Unit tests of the pieces (this process, no process group).


def test_shard_range_and_rows_cover_the_batch_without_overlap():
    for total in (1, 5, 8, 13):
        for world in range(1, min(total, 4) + 1):
            ranges = [shard_range(total, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
    for batch, world, group in ((8, 2, 4), (12, 3, 2), (16, 2, 4), (6, 2, 1)):
        rows = [shard_rows(batch, r, world, group) for r in range(world)]
        assert sorted(torch.cat(rows).tolist()) == list(range(batch))
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        shard_rows(8, 0, 3, group_size=4)


def test_sharded_minibatch_std_discriminator_equals_the_global_batch():
    """D (with its minibatch-stddev layer) on each rank's rows gives those rows of D on the whole batch."""
    config = stylegan2.get_config("tiny")
    D = stylegan2.Discriminator(config, seed=1)
    images = torch.randn(8, 3, config.img_resolution, config.img_resolution, generator=torch.Generator().manual_seed(0))
    D.requires_grad_(False)
    whole = D(images)
    for rank in range(2):
        rows = shard_rows(8, rank, 2, group_size=min(config.mbstd_group_size, 8))
        torch.testing.assert_close(D(images[rows]), whole[rows], rtol=0, atol=1e-6)
    contiguous = D(images[:4])  # a plain half mixes other samples (3e-4 off here, against < 1e-7)
    assert float((contiguous - whole[:4]).abs().max()) > 2e-5


def test_batch_shard_draws_are_rows_of_the_global_draws():
    whole = BatchShard(torch.Generator().manual_seed(3), 6)
    expected = [whole.rand(2), whole.randn(3, 4), whole.randint(-2, 3, 2)]
    rows = torch.tensor([4, 1])
    part = BatchShard(torch.Generator().manual_seed(3), 6, rows)
    got = [part.rand(2), part.randn(3, 4), part.randint(-2, 3, 2)]
    for e, g in zip(expected, got):
        assert torch.equal(e[rows], g)
    plain = torch.Generator().manual_seed(3)  # rows=None is exactly the plain draws
    assert torch.equal(BatchShard(plain, 6).rand(2), torch.rand(6, 2, generator=torch.Generator().manual_seed(3)))
    # Augmentations (F's and the GAN's) accept a shard and give the rows of the whole batch's result.
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    landmarks, params = torch.rand(6, 68, 2) * 64, torch.randn(6, 196) * 0.1
    full = reconstruction.augment(images, landmarks, params, torch.Generator().manual_seed(5))
    mine = reconstruction.augment(images[rows], landmarks[rows], params[rows], BatchShard(torch.Generator().manual_seed(5), 6, rows))
    for key in ("images", "landmarks", "params", "shift"):
        torch.testing.assert_close(mine[key], full[key][rows])
    from stylerig_lite.train_gan import diff_augment

    policy = "color,translation,cutout"
    full = diff_augment(images * 2 - 1, policy, torch.Generator().manual_seed(2))
    mine = diff_augment(images[rows] * 2 - 1, policy, BatchShard(torch.Generator().manual_seed(2), 6, rows))
    torch.testing.assert_close(mine, full[rows])


def test_pair_source_rows_are_the_global_pairs():
    from stylerig_lite import train_rignet
    from stylerig_lite.rignet import freeze

    G = freeze(stylegan2.Generator("tiny", seed=0))
    torch.manual_seed(0)
    F = freeze(reconstruction.ReconstructionNet(reconstruction.ReconstructionConfig(image_size=16, widths=(4, 8, 16, 32), head_hidden=16)))
    with torch.no_grad():
        w = G.mapping(torch.randn(7, G.z_dim, generator=torch.Generator().manual_seed(3)), None)
    corpus = [{"w": w[i], "image": G.synthesis(w[i : i + 1], noise_mode="const")[0]} for i in range(7)]
    for source in (None, corpus):
        pairs = train_rignet.PairSource(G, F, train_rignet.make_config("tiny", batch=3), source)
        whole_w, whole_v = pairs(2)
        for rows in (slice(0, 2), slice(2, 3)):
            part_w, part_v = pairs(2, rows)
            torch.testing.assert_close(part_w.w, whole_w.w[rows])
            torch.testing.assert_close(part_v.params, whole_v.params[rows], rtol=1e-4, atol=1e-5)


def test_sync_batchnorm_is_batchnorm_outside_a_process_group():
    bn = torch.nn.BatchNorm2d(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), bn)
    converted = distributed.convert_batchnorm(net)
    assert converted == [bn] and type(bn) is SyncBatchNorm2d
    x = torch.randn(5, 3, 8, 8)
    reference = torch.nn.BatchNorm2d(4)
    torch.testing.assert_close(bn(net[0](x)), reference(net[0](x)))
    distributed.restore_batchnorm(converted)
    assert type(bn) is torch.nn.BatchNorm2d and set(bn.state_dict()) == set(reference.state_dict())


# ----------------------------------------------------------------------------------------------
# Fixtures for the multi-process runs.


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> dict:
    """A tiny G (64 px, for the corpus), a tiny G (16 px) and a random 16 px F for RigNet, as files."""
    folder = tmp_path_factory.mktemp("networks")
    from stylerig_lite.rignet import estimator_input

    G64 = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=0).eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        F64 = reconstruction.ReconstructionNet(reconstruction.tiny_config())
        torch.nn.init.normal_(F64.head[-1].weight, std=0.1)
        G16 = stylegan2.Generator("tiny", seed=0).eval()
        F16 = reconstruction.ReconstructionNet(reconstruction.ReconstructionConfig(image_size=16, widths=(4, 8, 16, 32), head_hidden=16))
        torch.nn.init.normal_(F16.head[-1].weight, std=0.3)
        with torch.no_grad():  # calibrate BatchNorm on G's images, so F's estimates vary (as in test_rignet)
            for module in F16.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.momentum = None
                    module.reset_running_stats()
            w = G16.mapping(torch.randn(32, G16.z_dim), None)
            F16.train()(estimator_input(G16.synthesis(w, noise_mode="const"), 16))
    paths = {"G64": folder / "g64.pt", "F64": folder / "f64.pt", "G16": folder / "g16.pt", "F16": folder / "f16.pt"}
    stylegan2.save_checkpoint(paths["G64"], G64, G_ema=G64)
    stylegan2.save_checkpoint(paths["G16"], G16, G_ema=G16)
    F64.eval().save(paths["F64"])
    F16.eval().save(paths["F16"])
    return paths


# ----------------------------------------------------------------------------------------------
# Each trainer: 2 processes == 1 process, and resume across a change in the number of processes.


GAN_BATCH = 12  # three minibatch-stddev groups of 4: ranks take 2 and 1 (an uneven split)


def _gan_argv(out: Path, images: int) -> list:
    # Augmentation, path length (steps 0 and 4, batch 6: 3 + 3) and R1 (step 0) all run; a checkpoint every step.
    return ["train-gan", "--out", out, "--data", "blobs", "--preset", "tiny", "--images", images, "--batch", GAN_BATCH,
            "--augment", "color,translation,cutout", "--pl-weight", 2, "--checkpoint-every", GAN_BATCH,
            "--sample-every", 10**9, "--threads", 1, "--no-progress"]


def _gan_state(out: Path) -> dict:
    payload = stylegan2.load_checkpoint(out / "checkpoint.pt")
    state = {f"{net}.{k}": v for net in ("G", "D", "G_ema") for k, v in payload[net].items()}
    state["pl_mean"] = payload["extra"]["pl_mean"].reshape(1)
    state["counters"] = torch.tensor([payload["step"], payload["images_seen"]])
    state["rng"] = payload["extra"]["gen_state"]  # every random draw made alike, whatever the number of processes
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for key in ("loss_G", "loss_D", "D_real", "D_fake"):
        state[f"log.{key}"] = torch.tensor([entry[key] for entry in log])
    return state


def _f_argv(out: Path, data: Path, steps: int) -> list:
    # Batch 7: ranks take 4 and 3 images (an uneven split).
    return ["train-f", "--out", out, "--preset", "tiny", "--data-dir", data, "--images", 32, "--batch", 7, "--steps", steps,
            "--val-images", 0, "--threads", 1, "--quiet"]


def _f_state(out: Path) -> dict:
    data = torch.load(out, weights_only=True)
    state = dict(data["state_dict"])
    state["step"] = torch.tensor(data["train"]["step"])
    state["log.loss"] = torch.tensor([e["loss"] for e in data["train"]["history"]])  # logged global-batch means
    return state


def _rignet_argv(out: Path, networks: dict, steps: int) -> list:
    return ["train-rignet", "--component", "pose", "--out", out, "--preset", "tiny", "--generator", networks["G16"],
            "--f", "image", "--estimator", networks["F16"], "--steps", steps, "--batch", 3, "--log-every", 1, "--threads", 1, "--quiet"]


def _rignet_state(out: Path) -> dict:
    data = torch.load(out, weights_only=True)
    state = dict(data["state_dict"])
    state["step"] = torch.tensor(data["train"]["step"])
    for key in ("loss", "rec", "edit", "consist"):
        state[f"log.{key}"] = torch.tensor([e[key] for e in data["train"]["history"]])
    return state


def _equivalence_and_resume(tmp_path: Path, argv, state, path, half: int, full: int, lr: float, launcher=run_ranks) -> None:
    """2 ranks == 1 rank after ``half``; 2 -> 1 and 1 -> 2 ranks resumed to ``full`` == 1 rank all the way."""
    one, two, mixed = tmp_path / "one", tmp_path / "two", tmp_path / "one_then_two"
    for folder in (one, two):
        folder.mkdir()
    run_single(argv(path(one), half))
    reference_half = state(path(one))
    if path(one).is_dir():
        shutil.copytree(path(one), path(mixed))
    else:
        mixed.mkdir()
        shutil.copy(path(one), path(mixed))
    launcher(argv(path(two), half))
    assert_close_states(state(path(two)), reference_half, f"2 processes vs 1 after {half}", lr)

    run_single(argv(path(one), full))  # the reference: 1 process all the way
    reference = state(path(one))
    run_single(argv(path(two), full))  # 2 processes, then 1
    assert_close_states(state(path(two)), reference, "2 processes then 1 vs 1 all the way", lr)
    run_ranks(argv(path(mixed), full))  # 1 process, then 2
    assert_close_states(state(path(mixed)), reference, "1 process then 2 vs 1 all the way", lr)


@multiprocess
def test_train_gan_is_independent_of_the_number_of_processes(tmp_path):
    _equivalence_and_resume(tmp_path, _gan_argv, _gan_state, lambda folder: folder / "gan",
                            half=3 * GAN_BATCH, full=6 * GAN_BATCH, lr=0.0025)


@multiprocess
def test_train_f_is_independent_of_the_number_of_processes(tmp_path, face_shards):
    _equivalence_and_resume(tmp_path, lambda out, steps: _f_argv(out, face_shards, steps), _f_state,
                            lambda folder: folder / "f.pt", half=3, full=6, lr=1e-2, launcher=run_torchrun)


@multiprocess
def test_train_rignet_is_independent_of_the_number_of_processes(tmp_path, networks, ict_mirror):
    del ict_mirror  # the render loss needs the face model: skipped (or failed in CI) without the mirror
    _equivalence_and_resume(tmp_path, lambda out, steps: _rignet_argv(out, networks, steps), _rignet_state,
                            lambda folder: folder / "rig.pt", half=2, full=4, lr=1e-3)


@multiprocess
def test_a_time_limit_stops_every_process_after_the_same_step(tmp_path, face_shards):
    """--minutes is measured by rank 0 and shared with the others, so no process is left waiting."""
    out = tmp_path / "f.pt"
    run_ranks(_f_argv(out, face_shards, 50) + ["--minutes", "1e-9"])
    assert torch.load(out, weights_only=True)["train"]["step"] == 1


@multiprocess
def test_make_corpus_from_two_processes_equals_one(tmp_path, networks):
    from stylerig_lite.corpus import CorpusDataset

    argv = ["make-corpus", "--count", 10, "--shard-size", 3, "--generator", networks["G64"], "--estimator", networks["F64"],
            "--batch", 2, "--threads", 1, "--quiet"]
    run_single(argv + ["--out", tmp_path / "one"])
    results = run_ranks(argv + ["--out", tmp_path / "two"])
    assert "corpus of 10 pairs" in results[0][1] and not results[1][1]  # rank 0 reports, once
    one, two = tmp_path / "one", tmp_path / "two"
    manifests = [json.loads((root / "manifest.json").read_text()) for root in (one, two)]
    assert all(m["seconds_per_1000"] > 0 for m in manifests)  # measured (by rank 0, on its shards): differs run to run
    assert [{k: v for k, v in m.items() if k != "seconds_per_1000"} for m in manifests] == [
        {k: v for k, v in manifests[0].items() if k != "seconds_per_1000"}] * 2  # face_found_fraction: over all shards
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())  # 4 shards, no temporaries
    for shard in sorted(one.glob("shard_*.npz")):
        with np.load(shard) as a, np.load(two / shard.name) as b:
            assert a.files == b.files
            for key in a.files:
                floats = a[key].dtype.kind == "f"  # NaN: no face detected
                assert np.array_equal(a[key], b[key], equal_nan=floats), f"{shard.name}: {key}"
    assert len(CorpusDataset(two)) == 10


# ----------------------------------------------------------------------------------------------
# A lost process is a clean error, not a hang.


@multiprocess
@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_lost_process_is_a_clean_error_within_the_timeout(tmp_path, how):
    out = tmp_path / "gan"
    procs = _start_ranks(_gan_argv(out, 10**7), timeout=FROZEN_TIMEOUT_S)
    survivor, victim = procs
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (out / "checkpoint.pt").exists():  # training is under way (a checkpoint every step)
            assert survivor.poll() is None and victim.poll() is None, _finish(procs, 10)
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.kill(victim.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        start = time.monotonic()
        _, err = survivor.communicate(timeout=DIST_TIMEOUT_S + 60)
        waited = time.monotonic() - start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert survivor.returncode == 1, err
    assert "train-gan: error: rank 0 of 2 lost contact with the other processes" in err, err
    assert "Traceback" not in err, err
    # A dead peer is noticed at once (its sockets close); a silent one after the timeout.
    assert waited < (15 if how == "killed" else FROZEN_TIMEOUT_S + 30), waited
    assert stylegan2.load_checkpoint(out / "checkpoint.pt")["step"] >= 1  # the last checkpoint is intact
