"""Files: one atomic write, one sha256, the PNG encoders, and moving state to the CPU.

Floor: base (imports nothing from the package but :mod:`~stylerig_lite.checks`).

Every file the package writes (checkpoints, corpus shards and manifests, the
asset cache, PNG frames) goes through :func:`atomic_write`: the bytes land in a
temporary file beside the target, are flushed to disk, and replace the target
with ``os.replace``. A reader therefore sees the old file or the new one, never
half of one, even when the writer is killed. Every file hash is
:func:`sha256_file`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .checks import assert_shape

__all__ = [
    "PathLike",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "default_file_mode",
    "sha256_file",
    "to_cpu",
    "to_png",
    "image_png",
]

PathLike = Union[str, os.PathLike]
_CHUNK = 1 << 20  # 1 MiB blocks for hashing


# ----------------------------------------------------------------------------
# Atomic writes.


def default_file_mode() -> int:
    """rw for everyone minus the umask: what ``open()`` would give (``mkstemp`` always uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it, then ``os.replace`` it.

    The folder is created if needed. The file gets the mode ``open()`` would give
    (:func:`default_file_mode`), not ``mkstemp``'s 0600. On any error (or interrupt)
    the temporary file is removed and the old ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data: Any, *, indent: Optional[int] = 1) -> Path:
    """Write ``data`` as sorted-key JSON (one trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n")


def atomic_torch_save(data: Any, path: PathLike) -> Path:
    """``torch.save(data)`` to ``path`` atomically (:func:`atomic_write`): never a half-written checkpoint."""
    return atomic_write(path, lambda f: torch.save(data, f))


# ----------------------------------------------------------------------------
# Hashes.


def sha256_file(path: PathLike, progress: Optional[Callable[[int], None]] = None) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks; ``progress(n)`` is called after each block."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Tensors to the CPU.


def to_cpu(obj: Any) -> Any:
    """Recursively move tensors to the CPU; an object holding no GPU tensor is returned as it is.

    Returning the very same object when nothing moves keeps a state dict's
    ``_metadata`` and makes a CPU run's checkpoint byte-identical to what
    ``torch.save(state_dict)`` writes.
    """
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if isinstance(obj, dict):
        moved = {k: to_cpu(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj
        out = type(obj)(moved.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        moved_items = [to_cpu(v) for v in obj]
        if all(a is b for a, b in zip(moved_items, obj)):
            return obj
        return type(obj)(moved_items)
    return obj


# ----------------------------------------------------------------------------
# PNG.


def _quantise(image: torch.Tensor, value_range: Tuple[float, float]) -> np.ndarray:
    """``[3, H, W]`` float in ``value_range`` -> ``[H, W, 3]`` uint8 (clamped, rounded half up)."""
    assert_shape(image, [3, None, None], "image")
    low, high = value_range
    array = image.detach().float().cpu().numpy()
    if (low, high) != (0.0, 1.0):
        array = (array - low) / (high - low)
    return (array.clip(0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def to_png(images: Union[torch.Tensor, Sequence[torch.Tensor]], size: int = 256) -> bytes:
    """PNG bytes of one image ``[3, H, W]`` in [0, 1], or of several side by side, each upscaled to ``size``.

    Nearest-neighbour upscaling: a 64 px GAN image shown at 256 px keeps its real pixels visible.
    """
    from PIL import Image

    if isinstance(images, torch.Tensor):
        images = [images]
    tiles = [Image.fromarray(_quantise(image, (0.0, 1.0))).resize((size, size), Image.NEAREST) for image in images]
    canvas = Image.new("RGB", (size * len(tiles), size), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * size, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def image_png(image: torch.Tensor, *, value_range: Tuple[float, float] = (0.0, 1.0), compress_level: int = 0) -> bytes:
    """PNG bytes of one image ``[3, H, W]`` at its own resolution: what the editor's widgets show.

    Values are mapped from ``value_range`` to [0, 1], clamped and quantised exactly as
    :func:`to_png` does. The browser scales the image to the widget's size, with
    ``image-rendering: pixelated`` (the app's style) keeping the pixels sharp, as :func:`to_png`'s
    nearest-neighbour upscaling does for saved files; so a frame encodes a 64 px image, not a
    256 px one (16x fewer pixels; :func:`to_png` at 256 px took ~2 ms per frame, more than a third
    of a 64 px generator pass). Written directly (8-bit RGB, no filter, zlib ``compress_level``;
    0 = stored: a 64 px GAN image barely compresses, 12 KB either way).
    """
    pixels = _quantise(image, value_range)
    height, width, _ = pixels.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # each row: filter type 0, then R G B ...
    rows[:, 1:] = pixels.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + _png_chunk(b"IEND", b""))
