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
