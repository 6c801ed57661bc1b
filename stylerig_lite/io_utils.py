"""Files: one atomic write, one sha256, the PNG encoders, and moving state to the CPU.

Floor: base (imports nothing from the package but :mod:`~stylerig_lite.checks`).

Every file the package writes (checkpoints, corpus shards and manifests, the
asset cache, PNG frames) goes through :func:`atomic_write`: the bytes land in a
temporary file beside the target, are flushed to disk, and replace the target
with ``os.replace``. A reader therefore sees the old file or the new one, never
half of one, even when the writer is killed. Every file hash is
:func:`sha256_file`; a network's identity (weights and config, whatever file it
came from) is :func:`module_sha256`.

Every checkpoint the package reads goes through :func:`load_checkpoint_file`:
``torch.load(weights_only=True)`` with one clear :class:`CheckpointError` for an
empty, truncated, corrupt or foreign file (never torch's advice to load it with
``weights_only=False``). A folder that one process writes at a time (a corpus) is
held with :func:`folder_lock`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .checks import assert_shape

__all__ = [
    "PathLike",
    "CheckpointError",
    "checkpoint_state",
    "FolderLockedError",
    "folder_lock",
    "load_checkpoint_file",
    "load_network_file",
    "module_sha256",
    "GeneratorBinding",
    "GeneratorMismatchError",
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


def module_sha256(module: torch.nn.Module) -> str:
    """sha256 of a network's weights and config (not of its file): its identity.

    Two files that load to the same network (say an fp16 export read back as
    float32 twice) hash alike, and a network built in memory has a hash too, so
    a corpus or a RigNet can be matched to the generator it belongs to
    (``corpus.module_sha256`` is this function).
    """
    if not callable(getattr(module, "state_dict", None)):
        raise TypeError(f"module_sha256 needs a network with a state_dict(), got {type(module).__name__}")
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        # Raw bytes (a 0-dim tensor cannot be viewed as bytes: flatten first); bfloat16 has no numpy type.
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Reading checkpoints.


class CheckpointError(ValueError):
    """A checkpoint file is empty, truncated, corrupt, or not one this package wrote."""


def _first_sentence(error: BaseException) -> str:
    """The gist of a low-level error, without torch's advice to load untrusted files unsafely."""
    text = " ".join(str(error).split())
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0][:200].rstrip(".")
    if not text or "weights_only" in text or "Weights only" in text:
        return type(error).__name__
    return f"{type(error).__name__}: {text}"


def load_checkpoint_file(source: Union[PathLike, BinaryIO], what: str = "checkpoint", hint: str = "", *,
                         map_location: Any = "cpu") -> Any:
    """``torch.load(source, weights_only=True)`` with errors that say what is wrong and what to do.

    ``what`` names the file's kind in messages ("RigNet checkpoint"); ``hint`` says how to make
    or get a good one (say "train one with `stylerig-lite train-rignet --out PATH`"). Raises
    :class:`FileNotFoundError` for a missing path and :class:`CheckpointError` for an empty,
    truncated or corrupt file, for bytes that are no PyTorch checkpoint, and for a pickle that
    holds Python objects besides tensors and plain containers (which only ``weights_only=False``
    would read, running code from the file: never the advice here). ``source`` may also be an
    open binary file (no existence or size checks then).
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "name", "") or "the data")
    suffix = f"; {hint}" if hint else ""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no {what} at {path}{suffix}")
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder, not a {what} file{suffix}")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty (0 bytes), not a readable {what} (an interrupted copy or a full "
                                  f"disk leaves such files){suffix or '; delete it'}")
        source = path
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise CheckpointError(
                f"{name} is not a {what} this package wrote: it holds the Python object {found.group(1)}, and "
                f"checkpoints here hold only tensors, numbers, strings and containers of them (they are read "
                f"without running code from the file){suffix}") from None
        reason = "not a PyTorch checkpoint (random or foreign bytes)"
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError,
            AttributeError, TypeError, UnicodeDecodeError, struct.error) as error:
        if isinstance(error, FileNotFoundError):
            raise
        reason = f"truncated or corrupt ({_first_sentence(error)})"
    raise CheckpointError(f"{name} is not a readable {what}: {reason}. Replace it with a good copy{suffix}") from None


def checkpoint_state(data: Any, fmt: str, what: str) -> Dict[str, Any]:
    """The state dict of checkpoint ``data`` (floating tensors as float32), after checking its ``format``.

    Raises :class:`CheckpointError` naming ``what`` ("latent-F checkpoint") when ``data`` is not a
    dict whose ``format`` is ``fmt`` or holds no ``state_dict``. Networks saved in fp16 (the
    embedded weights) come back in float32, the precision every network here computes in.
    """
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"not a {what}: expected format {fmt!r}, found {found!r}")
    state = data.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"corrupt {what}: it holds no state_dict (found {type(state).__name__})")
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def load_network_file(from_checkpoint: Callable[[Dict[str, Any]], torch.nn.Module], path: PathLike, *,
                      what: str, fmt: str, nested_key: str, hint: str = "", map_location: Any = "cpu",
                      frozen: bool = True) -> torch.nn.Module:
    """A network from a file that :meth:`save` wrote, or from a training checkpoint that nests it.

    ``from_checkpoint`` builds the network from the saved dict; a training checkpoint (whose own
    ``format`` is not ``fmt``) holds that dict under ``nested_key``. The network comes back in
    eval mode and, when ``frozen``, with ``requires_grad`` off (what the book's users want from a
    pretrained network). Errors as :func:`load_checkpoint_file`, with ``hint`` saying how to make one.
    """
    data = load_checkpoint_file(path, what, hint=hint, map_location=map_location)
    if isinstance(data, dict) and nested_key in data and data.get("format") != fmt:
        data = data[nested_key]
    net = from_checkpoint(data).eval()
    if frozen:
        net.requires_grad_(False)
    return net


# ----------------------------------------------------------------------------
# One writer per folder.


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(path: PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold ``<path>/.lock`` (``fcntl.flock``, exclusive, non-blocking) while the ``with`` block runs.

    The folder is created if needed. A second holder, in another process or through another
    :func:`folder_lock` in this one, fails at once with :class:`FolderLockedError` naming the
    folder and the pid of the process that holds it (written into the lock file). The lock is
    released, and its file removed, when the block ends, and by the kernel when the process
    dies (a killed writer leaves no stale lock). Yields the lock file's path. Without ``fcntl``
    (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield Path(path) / ".lock"
        return
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, default_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = lock.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise FolderLockedError(
                f"{folder} is being written by another process (pid {holder}, holding {lock}); "
                f"wait for it to finish or stop it, then run this again. Two writers on one {what} "
                f"would corrupt it") from None
        # The previous holder may have removed the file between our open and our lock: then we
        # hold a lock on a deleted file, and must take the one at the path instead.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: the next holder's inode check sees the new file
        os.close(fd)


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


# ----------------------------------------------------------------------------
# Networks that belong to one generator (RigNet, the latent F).


class GeneratorMismatchError(ValueError):
    """A network (RigNet, latent F) or a corpus is used with another generator than the one it was made with."""


class GeneratorBinding:
    """Mixin: a network that reads or writes one generator's latents records that generator and checks it.

    A RigNet's edits and a latent F's readings are functions of one generator's W+ space: with
    another generator's latents they are silently wrong. The class mixing this in calls
    ``self.record_generator(None)`` in ``__init__`` and defines ``_binding_label()`` (e.g. "pose
    RigNet") and ``_binding_fix()`` (what to do instead); ``binding_fields()`` go into its checkpoint.
    """

    generator_sha256: Optional[str]
    generator_file_sha256: Optional[str]

    def _binding_label(self) -> str:
        return type(self).__name__

    def _binding_fix(self) -> str:
        return "train one for this generator"

    def record_generator(self, sha256: Optional[str] = None, *, file_sha256: Optional[str] = None,
                         sha256_from: Optional[Callable[[], str]] = None):
        """Record the generator this network was trained on (returns ``self``).

        ``sha256``: :func:`module_sha256` of the generator (the identity :meth:`check_generator`
        compares); ``file_sha256``: the sha256 of its checkpoint file (or, for the photoreal generator,
        the combined sha256 of its IR files), when known; ``sha256_from``: a function that computes
        ``sha256`` when first needed (hashing a generator costs a load). Saved with the checkpoint.
        """
        self.generator_sha256 = sha256
        self.generator_file_sha256 = file_sha256
        self._generator_sha256_from = sha256_from if sha256 is None else None
        return self

    def trained_generator_sha256(self) -> Optional[str]:
        """:func:`module_sha256` of the generator this network was trained on, or None."""
        if self.generator_sha256 is None and getattr(self, "_generator_sha256_from", None) is not None:
            self.generator_sha256 = self._generator_sha256_from()
            self._generator_sha256_from = None
        return self.generator_sha256

    def binding_fields(self) -> dict:
        """The checkpoint keys that record the generator (``generator_sha256``, ``generator_file_sha256``)."""
        data = {}
        trained = self.trained_generator_sha256()
        if trained is not None:
            data["generator_sha256"] = trained
        if self.generator_file_sha256 is not None:
            data["generator_file_sha256"] = self.generator_file_sha256
        return data

    def check_generator(self, G: Any, *, file_sha256: Optional[str] = None) -> None:
        """Raise :class:`GeneratorMismatchError` unless ``G`` is the generator this network was trained on.

        ``G``: the generator (a network; compared by :func:`module_sha256`); ``file_sha256``: the
        sha256 of the file it was loaded from, if known (a match is enough; the photoreal generator
        carries its own as ``G.generator_sha256``). A network without a record is not checked.
        """
        if (self.generator_sha256 is None and self.generator_file_sha256 is None
                and getattr(self, "_generator_sha256_from", None) is None):
            return
        if file_sha256 is None:
            file_sha256 = getattr(G, "generator_sha256", None) if isinstance(getattr(G, "generator_sha256", None),
                                                                             str) else None
        if file_sha256 is not None and file_sha256 == self.generator_file_sha256:
            return
        label = self._binding_label()
        trained = self.trained_generator_sha256()
        given: Optional[str] = None
        if trained is not None:
            try:
                given = module_sha256(G)
            except TypeError:
                raise GeneratorMismatchError(
                    f"this {label} belongs to the generator with sha256 {trained[:12]}..., and "
                    f"{type(G).__name__} is no network whose weights can be compared with it (no state_dict)") from None
            if given == trained:
                return
        elif file_sha256 is None:
            raise GeneratorMismatchError(
                f"this {label} belongs to the generator file with sha256 "
                f"{str(self.generator_file_sha256)[:12]}...; pass file_sha256= of the generator's file to check it")
        trained_text = (f"{trained[:12]}..." if trained else "?") + (
            f" (file sha256 {self.generator_file_sha256[:12]}...)" if self.generator_file_sha256 else "")
        given_text = (f"{given[:12]}..." if given else "?") + (f" (file sha256 {file_sha256[:12]}...)" if file_sha256 else "")
        raise GeneratorMismatchError(
            f"this {label} was trained on the generator with sha256 {trained_text}; you passed "
            f"a generator with sha256 {given_text}. {self._binding_fix()}")
