"""``--device``: resolution of device names, the CPU path unchanged, checkpoints on the CPU, device-clean steps (train-gan, train-f, train-rignet, evaluate)."""

from __future__ import annotations

import collections

import pytest
import torch

from stylerig_lite import distributed
from stylerig_lite.devices import resolve_device
from stylerig_lite.io_utils import to_cpu
from stylerig_lite.stylegan2 import load_checkpoint
from stylerig_lite.train_gan import GANTrainer, PendingStats, TrainConfig, make_blob_source
from stylerig_lite.train_gan import main as train_gan_main


@pytest.fixture
def no_torchrun(monkeypatch):
    for key in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def fake_gpus(monkeypatch, no_torchrun):
    """Pretend two GPUs are visible (only resolve_device looks; nothing is computed on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_resolve_device_without_a_gpu(monkeypatch, no_torchrun):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"requested but torch.cuda.is_available\(\) is False.*use --device cpu"):
            resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "auto:1", "cuda:x", "cuda:", "mps", ""])
def test_resolve_device_rejects_malformed_names(spec):
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(spec)


def test_resolve_device_with_gpus(fake_gpus, monkeypatch):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"cuda:2 requested but only 2 GPU\(s\) are visible"):
        resolve_device("cuda:2")
    # Under torchrun each process takes the GPU of its local rank.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins


def test_backend_follows_the_device():
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"


def _tiny_run(out, *extra):
    train_gan_main(["--out", str(out), "--preset", "tiny", "--images", "16", "--batch", "8", "--checkpoint-every", "8",
                    "--sample-every", "16", "--augment", "color,translation,cutout", "--pl-weight", "2",
                    "--no-progress", *extra])
    return (out / "checkpoint.pt").read_bytes()


def test_device_cpu_is_the_default_path_bit_for_bit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # 'auto' means the CPU here
    default = _tiny_run(tmp_path / "default")
    explicit = _tiny_run(tmp_path / "cpu", "--device", "cpu")
    assert default == explicit
    assert "on cpu" in capsys.readouterr().out
    # Every tensor in the file is a CPU tensor (torch.load without map_location keeps saved devices).
    payload = torch.load(tmp_path / "cpu" / "checkpoint.pt", weights_only=True)
    devices = set()

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            devices.add(obj.device.type)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(payload)
    assert devices == {"cpu"}


def test_to_cpu_keeps_cpu_state_dicts_as_they_are():
    sd = torch.nn.Linear(2, 3).state_dict()
    assert to_cpu(sd) is sd and hasattr(sd, "_metadata")
    nested = {"a": [torch.zeros(2), (torch.ones(1), 3)], "b": collections.OrderedDict(x=torch.zeros(1))}
    assert to_cpu(nested) is nested


def test_gan_step_creates_nothing_off_the_device():
    """A whole step (augmentation, style mixing, noise, R1, path length, EMA) on the 'meta' device.

    Mixing a CPU tensor into a meta computation raises, as mixing one into a CUDA computation does,
    so this catches tensors created on the CPU in the hot path without a GPU.
    """
    cfg = TrainConfig(batch_size=8, augment="color,translation,cutout", pl_weight=2.0, pl_interval=1, r1_interval=1)
    trainer = GANTrainer("tiny", cfg, make_blob_source(16), device=torch.device("meta"))
    pending = trainer.train_step(sync=False)
    assert isinstance(pending, PendingStats) and pending.values.device.type == "meta"
    assert set(pending.keys) == {"loss_G", "loss_D", "D_real", "D_fake", "r1_penalty", "pl_penalty"}
    for module in (trainer.G, trainer.D, trainer.G_ema):
        assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}
    assert trainer.pl_mean.device.type == "meta" and trainer.step == 1


def test_deferred_stats_equal_the_per_step_ones():
    cfg = TrainConfig(batch_size=8, r1_interval=2)
    a = GANTrainer("tiny", cfg, make_blob_source(16))
    b = GANTrainer("tiny", cfg, make_blob_source(16))
    eager = [a.train_step() for _ in range(3)]
    deferred = b.resolve_stats([b.train_step(sync=False) for _ in range(3)])
    assert deferred == eager and b.history == a.history


def test_minutes_stops_with_a_checkpoint(tmp_path):
    train_gan_main(["--out", str(tmp_path), "--preset", "tiny", "--images", "10000", "--batch", "8",
                    "--minutes", "0", "--no-progress", "--device", "cpu"])
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["images_seen"] == 8  # one step, then the time was up
    assert list(tmp_path.glob("fakes*.png"))


def test_resume_batch_keeps_the_r1_weight(tmp_path):
    train_gan_main(["--out", str(tmp_path), "--preset", "tiny", "--images", "8", "--batch", "8", "--no-progress"])
    train_gan_main(["--out", str(tmp_path), "--preset", "tiny", "--images", "24", "--resume-batch", "16",
                    "--no-progress"])
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    stored = payload["extra"]["train_config"]
    assert payload["images_seen"] == 24 and stored["batch_size"] == 16
    res = payload["config"]["img_resolution"]
    assert stored["r1_gamma"] == pytest.approx(0.0002 * res ** 2 / 8)


# ----------------------------------------------------------------------------------------------
# train-f, train-rignet and evaluate: the same --device support.


def _tensors(obj, prefix=""):
    """Every tensor of a (nested) checkpoint, by path; non-tensor leaves by path as well."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _tensors(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _tensors(value, f"{prefix}[{i}]").items()}
    return {prefix: obj}


def _same_checkpoints(a, b):
    """Equal checkpoints up to the wall-clock fields (elapsed_s), and every tensor on the CPU."""
    flat_a = {k: v for k, v in _tensors(torch.load(a, weights_only=True)).items() if "elapsed_s" not in k}
    flat_b = {k: v for k, v in _tensors(torch.load(b, weights_only=True)).items() if "elapsed_s" not in k}
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu" and flat_b[key].device.type == "cpu", key
            assert value.dtype == flat_b[key].dtype and torch.equal(value, flat_b[key]), key
        else:
            assert value == flat_b[key], key
    return flat_a


@pytest.fixture(scope="module")
def rig_networks(tmp_path_factory):
    """A tiny 16 px G and a random 16 px F (BatchNorm calibrated on G's images), as files."""
    from stylerig_lite import reconstruction, stylegan2
    from stylerig_lite.rignet import estimator_input

    folder = tmp_path_factory.mktemp("rig_networks")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = stylegan2.Generator("tiny", seed=0).eval()
        F = reconstruction.ReconstructionNet(reconstruction.ReconstructionConfig(image_size=16, widths=(4, 8, 16, 32), head_hidden=16))
        torch.nn.init.normal_(F.head[-1].weight, std=0.3)
        with torch.no_grad():
            for module in F.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.momentum = None
                    module.reset_running_stats()
            w = G.mapping(torch.randn(16, G.z_dim), None)
            F.train()(estimator_input(G.synthesis(w, noise_mode="const"), 16))
    paths = {"G": folder / "g16.pt", "F": folder / "f16.pt"}
    stylegan2.save_checkpoint(paths["G"], G, G_ema=G)
    F.eval().save(paths["F"])
    return paths


def _rignet_run(out, networks, steps, *extra):
    from stylerig_lite.cli import main

    assert main(["train-rignet", "--component", "pose", "--out", str(out), "--preset", "tiny", "--generator", str(networks["G"]),
                 "--f", "image", "--estimator", str(networks["F"]), "--steps", str(steps), "--batch", "2", "--log-every", "3",
                 "--threads", "1", "--quiet", *extra]) == 0


def test_train_rignet_device_cpu_is_the_default_path(tmp_path, monkeypatch, rig_networks, ict_mirror, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # 'auto' means the CPU here
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")  # the same relative --out: the configs stored are equal too
    _rignet_run("rig.pt", rig_networks, 4)
    monkeypatch.chdir(tmp_path / "b")
    _rignet_run("rig.pt", rig_networks, 4, "--device", "cpu")
    flat = _same_checkpoints(tmp_path / "a" / "rig.pt", tmp_path / "b" / "rig.pt")
    assert flat["/train/step"] == 4 and any(k.startswith("/train/optimizer/state") for k in flat)
    # Resumed (past a log entry, with running sums in the file) on the explicit CPU, from the default's checkpoint.
    _rignet_run("rig.pt", rig_networks, 7)
    monkeypatch.chdir(tmp_path / "a")
    _rignet_run("rig.pt", rig_networks, 7, "--device", "cpu")
    _same_checkpoints(tmp_path / "a" / "rig.pt", tmp_path / "b" / "rig.pt")
    capsys.readouterr()


def test_train_rignet_deferred_stats_equal_the_per_step_ones(tmp_path, monkeypatch, rig_networks, ict_mirror):
    """The GPU path's once-per-log read-back of the logged values, forced on the CPU: the same history."""
    from stylerig_lite import train_rignet

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _rignet_run("rig.pt", rig_networks, 4, "--device", "cpu")
    monkeypatch.setattr(train_rignet, "defer_stats", lambda device: True)
    monkeypatch.chdir(tmp_path / "b")
    _rignet_run("rig.pt", rig_networks, 4, "--device", "cpu")  # stops after step 4: 1 value pending at the end
    _same_checkpoints(tmp_path / "a" / "rig.pt", tmp_path / "b" / "rig.pt")


def test_train_rignet_resumes_onto_another_device(tmp_path, monkeypatch, rig_networks, ict_mirror):
    """A CPU checkpoint's RigNet and optimizer state go where the resuming run computes ('meta' here)."""
    from stylerig_lite import train_rignet

    monkeypatch.chdir(tmp_path)
    _rignet_run("rig.pt", rig_networks, 2, "--device", "cpu")
    config = train_rignet.make_config("tiny", out="rig.pt", component="pose", steps=2, batch=2, log_every=3, threads=1,
                                      generator=str(rig_networks["G"]), estimator=str(rig_networks["F"]), f="image")
    state = train_rignet.load_train_state("rig.pt", config, device=torch.device("meta"))
    assert {p.device.type for p in state.rignet.parameters()} == {"meta"}
    moments = [v for s in state.optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and {t.device.type for t in moments} == {"meta"}


def test_rig_losses_create_nothing_off_the_inputs_device(rig_networks, ict_mirror):
    """RigNet's objective (G, F, the renderer and rasterizer, the render losses) creates no tensor on the default device.

    The rasterizer reads back a few sizes, which the 'meta' device cannot, so the trick of
    test_gan_step_creates_nothing_off_the_device is turned round: the data stay on the CPU and the
    *default* device is 'meta', so a factory call without ``device=`` (torch.zeros(n), torch.arange(n), ...)
    makes a meta tensor, and mixing it with the CPU data raises, as a CPU tensor would on a GPU.
    """
    import dataclasses

    from stylerig_lite import losses, morphable, pretrained
    from stylerig_lite.face_render import default_camera
    from stylerig_lite.rignet import RigNet, RigNetConfig, RigSample, describe, freeze, rig_losses

    G = freeze(pretrained.generator(str(rig_networks["G"])))
    F = freeze(pretrained.face_estimator(str(rig_networks["F"])))
    render = losses.RenderLoss(morphable.load_face_model(progress=False), default_camera(16))
    sample = describe(G, F, G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), None))
    halves = [RigSample(*(getattr(sample, f.name)[k * 2 : (k + 1) * 2] for f in dataclasses.fields(RigSample))) for k in (0, 1)]
    net = RigNet(RigNetConfig.for_generator(G, "pose"))
    with torch.no_grad():
        for decoder in net.decoders:  # a RigNet that edits (its decoders start at zero)
            decoder.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    expected, _ = rig_losses(net, G, F, render, *halves)  # also fills the cropped face model's cache (built once)
    with torch.device("meta"):
        loss, parts = rig_losses(net, G, F, render, *halves)
        loss.backward()
    assert loss.device.type == "cpu" and torch.equal(loss.detach(), expected.detach())
    assert all(p.grad is not None and p.grad.device.type == "cpu" for p in net.parameters() if p.requires_grad)


def _train_f_run(out, data, steps, *extra):
    from stylerig_lite.cli import main

    assert main(["train-f", "--out", str(out), "--preset", "tiny", "--data-dir", str(data), "--images", "32", "--batch", "7",
                 "--steps", str(steps), "--val-images", "0", "--threads", "1", "--quiet", *extra]) == 0


def test_train_f_device_cpu_is_the_default_path(tmp_path, monkeypatch, face_shards, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _train_f_run("f.pt", face_shards, 5)
    monkeypatch.chdir(tmp_path / "b")
    _train_f_run("f.pt", face_shards, 5, "--device", "cpu")
    flat = _same_checkpoints(tmp_path / "a" / "f.pt", tmp_path / "b" / "f.pt")
    assert flat["/train/step"] == 5 and any(k.startswith("/train/optimizer/state") for k in flat)
    _train_f_run("f.pt", face_shards, 8)  # resumed by the default path from an explicit --device cpu checkpoint
    monkeypatch.chdir(tmp_path / "a")
    _train_f_run("f.pt", face_shards, 8, "--device", "cpu")
    _same_checkpoints(tmp_path / "a" / "f.pt", tmp_path / "b" / "f.pt")
    capsys.readouterr()


def test_train_f_deferred_stats_equal_the_per_step_ones(tmp_path, monkeypatch, face_shards, capsys):
    from stylerig_lite import train_f

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _train_f_run("f.pt", face_shards, 5, "--device", "cpu")
    monkeypatch.setattr(train_f, "defer_stats", lambda device: True)
    monkeypatch.chdir(tmp_path / "b")
    _train_f_run("f.pt", face_shards, 5, "--device", "cpu")
    _same_checkpoints(tmp_path / "a" / "f.pt", tmp_path / "b" / "f.pt")
    capsys.readouterr()


def test_train_f_step_creates_nothing_off_the_device():
    """F's forward pass, loss, gradient clipping and AdamW step on the 'meta' device (see the GAN test)."""
    from stylerig_lite.reconstruction import ReconstructionNet, reconstruction_loss, tiny_config
    from stylerig_lite.train_f import TrainConfig, _make_optimizer

    meta = torch.device("meta")
    net = ReconstructionNet(tiny_config()).to(meta).train()
    optimizer = _make_optimizer(net, TrainConfig())
    images = torch.rand(4, 3, 64, 64, device=meta)
    output = net(images)
    loss, parts = reconstruction_loss(net, output, torch.zeros(4, 196, device=meta), torch.zeros(4, 68, 2, device=meta))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    optimizer.step()
    assert loss.device.type == "meta" and {v.device.type for v in parts.values()} == {"meta"}
    assert {t.device.type for s in optimizer.state.values() for t in s.values()} <= {"meta", "cpu"}  # 'step' may stay on the CPU


def test_train_f_resumes_onto_another_device(tmp_path, monkeypatch, face_shards, capsys):
    from stylerig_lite import train_f

    monkeypatch.chdir(tmp_path)
    _train_f_run("f.pt", face_shards, 2, "--device", "cpu")
    config = train_f.make_config("tiny", out="f.pt", data_dir=str(face_shards), images=32, batch=7, steps=2, val_images=0, threads=1)
    state = train_f.load_train_state("f.pt", config, device=torch.device("meta"))
    assert {p.device.type for p in state.net.parameters()} == {"meta"}
    moments = [v for s in state.optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and {t.device.type for t in moments} == {"meta"}
    capsys.readouterr()


@pytest.mark.parametrize("command", [
    ["train-f", "--out", "never.pt"],
    ["train-rignet", "--component", "pose", "--out", "never.pt"],
    ["evaluate"],
])
def test_device_errors_through_the_clis(command, monkeypatch, no_torchrun, tmp_path):
    from stylerig_lite.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    name = command[0]
    with pytest.raises(SystemExit, match=rf"stylerig-lite {name}: error: cuda:1 requested but torch.cuda.is_available\(\) is False"):
        main([*command, "--device", "cuda:1"])
    with pytest.raises(SystemExit, match=rf"stylerig-lite {name}: error: unknown device 'gpu'"):
        main([*command, "--device", "gpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit, match=rf"stylerig-lite {name}: error: cuda:3 requested but only 1 GPU"):
        main([*command, "--device", "cuda:3"])
    assert not (tmp_path / "never.pt").exists()


_ALLOCATOR_CHILD = r"""
import ctypes, json
import torch


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
from stylerig_lite import devices
from stylerig_lite.mobilestylegan.networks import MobileStyleGAN

G = MobileStyleGAN()  # zero weights: only the call matters here
with torch.no_grad():
    G.synthesis(torch.zeros(1, G.num_ws, G.w_dim), resolution=256)
called = devices.keep_freed_memory.cache_info().currsize > 0
before = libc.mallinfo2().hblks
big = torch.ones(16 << 20)  # 64 MB
mapped = libc.mallinfo2().hblks - before
print(json.dumps({"called": called, "kept": devices.keep_freed_memory(), "mapped": int(mapped)}))
"""


def _allocator_child(env_value):
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, STYLERIG_LITE_MALLOC=env_value)
    out = subprocess.run([sys.executable, "-c", _ALLOCATOR_CHILD], env=env, capture_output=True, text=True)
    if out.returncode:
        if "mallinfo2" in out.stderr:
            pytest.skip("glibc without mallinfo2 (before 2.33)")
        raise AssertionError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_serves_large_buffers_from_the_heap():
    """After the photoreal synthesis ran once, a 64 MB tensor is not mmapped (and is with the opt-out)."""
    kept = _allocator_child("")
    assert kept == {"called": True, "kept": True, "mapped": 0}
    default = _allocator_child("default")
    assert default == {"called": True, "kept": False, "mapped": 1}
