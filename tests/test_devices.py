"""``--device``: resolution of device names, the CPU path unchanged, checkpoints on the CPU, device-clean GAN steps."""

from __future__ import annotations

import collections

import pytest
import torch

from stylerig_lite import distributed
from stylerig_lite.devices import resolve_device
from stylerig_lite.stylegan2 import _to_cpu, load_checkpoint
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
    assert _to_cpu(sd) is sd and hasattr(sd, "_metadata")
    nested = {"a": [torch.zeros(2), (torch.ones(1), 3)], "b": collections.OrderedDict(x=torch.zeros(1))}
    assert _to_cpu(nested) is nested


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
