"""io_utils: one atomic write, one sha256, the PNG encoders, to_cpu."""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bad_files import BAD_FILE_WORDS, bad_checkpoints
from stylerig_lite import io_utils


def test_atomic_write_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "file.json"
    io_utils.atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1} and path.read_text().endswith("\n")
    assert path.stat().st_mode & 0o777 == io_utils.default_file_mode()

    def crash(f):
        f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        io_utils.atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}  # the old file, untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.json"]  # no temporary left

    io_utils.atomic_write(tmp_path / "a.npz", lambda f: np.savez(f, x=np.arange(3)))
    with np.load(tmp_path / "a.npz") as data:
        assert data["x"].tolist() == [0, 1, 2]
    io_utils.atomic_torch_save({"t": torch.ones(2)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["t"], torch.ones(2))
    io_utils.atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"


def test_sha256_file_is_hashlib_over_the_bytes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one block
    (tmp_path / "blob").write_bytes(data)
    seen = []
    assert io_utils.sha256_file(tmp_path / "blob", progress=seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and len(seen) == 4


def test_to_cpu_returns_the_same_object_when_nothing_moves():
    state = torch.nn.Linear(2, 2).state_dict()
    assert io_utils.to_cpu(state) is state and hasattr(state, "_metadata")
    nested = {"a": [torch.zeros(1), (torch.ones(1),)], "b": 3}
    assert io_utils.to_cpu(nested) is nested


def test_png_encoders_decode_to_the_quantised_image():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 5, 7, generator=g)
    expected = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    native = np.asarray(Image.open(io.BytesIO(io_utils.image_png(image))))
    assert native.shape == (5, 7, 3) and np.array_equal(native, expected)
    signed = np.asarray(Image.open(io.BytesIO(io_utils.image_png(image * 2 - 1, value_range=(-1.0, 1.0)))))
    assert np.abs(signed.astype(int) - expected.astype(int)).max() <= 1
    wide = np.asarray(Image.open(io.BytesIO(io_utils.to_png([image, image], size=14))))
    assert wide.shape == (14, 28, 3) and np.array_equal(wide[:, :14], wide[:, 14:])  # two tiles side by side
    assert np.array_equal(wide[0, 0], expected[0, 0]) and np.array_equal(wide[-1, 13], expected[-1, -1])  # nearest
    with pytest.raises(ValueError, match="image"):
        io_utils.image_png(torch.rand(4, 5, 5))


# ----------------------------------------------------------------------------------------- checkpoints


def test_load_checkpoint_file_says_what_is_wrong_and_never_suggests_weights_only_false(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"weights": torch.arange(3000.0)}, good)
    assert torch.equal(io_utils.load_checkpoint_file(good, "thing")["weights"], torch.arange(3000.0))
    with pytest.raises(FileNotFoundError, match=r"no thing at .*missing.pt; make one with `make-thing`"):
        io_utils.load_checkpoint_file(tmp_path / "missing.pt", "thing", "make one with `make-thing`")
    for kind, path in bad_checkpoints(tmp_path, good).items():
        with pytest.raises(io_utils.CheckpointError, match=BAD_FILE_WORDS[kind]) as error:
            io_utils.load_checkpoint_file(path, "thing", "make one with `make-thing`")
        message = str(error.value)
        assert str(path) in message and "make-thing" in message, kind
        assert "weights_only" not in message and "Weights only" not in message, (kind, message)
        assert isinstance(error.value, ValueError)
    # A pickle of arbitrary Python objects: only weights_only=False would read it (running code from the file).
    foreign = tmp_path / "foreign.pt"
    torch.save({"when": __import__("datetime").date(2020, 1, 1)}, foreign)
    with pytest.raises(io_utils.CheckpointError, match="datetime.date") as error:
        io_utils.load_checkpoint_file(foreign, "thing")
    assert "weights_only" not in str(error.value)
    with pytest.raises(io_utils.CheckpointError, match="is a folder"):
        io_utils.load_checkpoint_file(tmp_path, "thing")
    with pytest.raises(io_utils.CheckpointError, match="the data is not a readable"):
        io_utils.load_checkpoint_file(io.BytesIO(b"garbage"), "thing")


def test_module_sha256_is_the_identity_of_weights_and_config():
    from stylerig_lite import corpus

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert corpus.module_sha256 is io_utils.module_sha256  # one implementation
    assert io_utils.module_sha256(a) != io_utils.module_sha256(b)
    b.load_state_dict(a.state_dict())
    assert io_utils.module_sha256(a) == io_utils.module_sha256(b)
    with pytest.raises(TypeError, match="state_dict"):
        io_utils.module_sha256(object())


# ----------------------------------------------------------------------------------------- folder lock

_HOLD_LOCK = """
import sys, time
from stylerig_lite.io_utils import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()  # hold it until the test says so
"""


def test_folder_lock_admits_one_holder_at_a_time(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "corpus"
    with io_utils.folder_lock(folder) as lock:
        assert lock == folder / ".lock" and lock.read_text().strip() == str(os.getpid())
        # flock locks belong to open files: a second lock in the same process conflicts too (Linux).
        with pytest.raises(io_utils.FolderLockedError, match=rf"{folder}.*pid {os.getpid()}"):
            with io_utils.folder_lock(folder):
                pass
    assert not lock.exists()  # released and removed
    with io_utils.folder_lock(folder):  # free again
        pass

    # Another process holds it: refused at once, naming that process.
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(io_utils.FolderLockedError, match=rf"{folder} is being written by another process "
                                                             rf"\(pid {holder.pid}"):
            with io_utils.folder_lock(folder):
                pass
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    with io_utils.folder_lock(folder):  # its lock went with it
        pass

    # A holder that dies without cleaning up leaves no stale lock (the kernel drops flock locks).
    killed = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "locked"
    killed.kill()
    killed.wait(timeout=60)
    killed.stdin.close()
    killed.stdout.close()
    with io_utils.folder_lock(folder):
        pass


@pytest.mark.parametrize("kind", ["rignet", "latent_f", "encoder"])
def test_a_checkpoint_of_the_right_format_with_a_broken_body_is_refused_clearly(tmp_path, kind):
    """Right ``format`` key, wrong insides (no state_dict, no config, a missing tensor): CheckpointError, not KeyError."""
    from stylerig_lite import encoder, latent_f, rignet
    from stylerig_lite.io_utils import CheckpointError

    net, label = {
        "rignet": (rignet.RigNet(rignet.RigNetConfig(component="pose", num_ws=6, w_dim=32, latent_dim=8)), "RigNet"),
        "latent_f": (latent_f.LatentF(latent_f.get_config("tiny")), "latent-F"),
        "encoder": (encoder.PhotoEncoder(encoder.get_config("tiny")), "photo-encoder"),
    }[kind]
    good = net.checkpoint()
    type(net).from_checkpoint(good)  # the unbroken one loads
    first = next(iter(good["state_dict"]))
    broken = {
        "no state_dict": {k: v for k, v in good.items() if k != "state_dict"},
        "no config": {k: v for k, v in good.items() if k != "config"},
        "a tensor missing": {**good, "state_dict": {k: v for k, v in good["state_dict"].items() if k != first}},
    }
    for what, data in broken.items():
        torch.save(data, tmp_path / "broken.pt")
        with pytest.raises(CheckpointError, match=rf"{label} checkpoint") as error:
            type(net).load(tmp_path / "broken.pt")
        assert "weights_only" not in str(error.value), what
