"""Registry of third-party files, hashed download and one local cache.

Every external file the project reads (today: the ICT-FaceKit face model) is
listed in a committed registry, ``stylerig_lite/data/asset_registry.json``:
a key such as ``ict-facekit/FaceXModel/identity000.obj`` maps to the upstream
URL pinned to a commit, the sha256 and byte size of the file exactly as
upstream serves it, the file's path inside a local mirror, and its licence.

``fetch(key)`` returns the path of a verified copy in the cache, looking in
this order:

1. **Cache** ``<cache>/<key>``. The cache folder is ``$STYLERIG_LITE_CACHE``,
   else ``$XDG_CACHE_HOME/stylerig_lite``, else ``~/.cache/stylerig_lite``.
   Files there are stored uncompressed, byte-identical to upstream. A file
   is verified (size and sha256) once; the result is remembered in a sidecar
   ``<file>.sha256`` that is trusted only while the file's size and mtime
   are unchanged, so repeated fetches do not rehash hundreds of megabytes.
   A cached file with the wrong content is removed and obtained again.
2. **Mirror** ``$STYLERIG_LITE_ASSET_MIRROR/<mirror_path>``: a local folder
   (the Makefile and CI point it at ``../shared/assets``) holding the files
   gzip-compressed (``<name>.gz``) or uncompressed (``<name>``). The file is
   decompressed into a temporary file next to its cache path, checked, and
   moved into place with ``os.replace``. A bad mirror file (broken gzip,
   wrong size or hash) is an error that names it: a mirror is meant to be
   trusted, so it is never silently skipped.
3. **Download** from the pinned URL with ``urllib`` (timeout, progress bar),
   streamed into a temporary file in the cache folder, checked against the
   registry's size and sha256, then moved into place. ``STYLERIG_LITE_OFFLINE=1``
   forbids this step.

Whatever fails raises :class:`AssetError`, whose message names the key, the
URL, the expected sha256 and size, the cache path, and how to provide the
file by hand. Nothing half-written or corrupt is ever left at a cache path.

Command line::

    python -m stylerig_lite.assets --list
    python -m stylerig_lite.assets KEY [KEY ...]         # fetch, print paths
    python -m stylerig_lite.assets --all                 # fetch everything
    python -m stylerig_lite.assets --regenerate-registry PATH/SHA256SUMS

Importing this module has no side effects: no folder is created and no
environment variable is read until a function is called.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import gzip
import hashlib
import http.client
import importlib.resources
import json
import logging
import os
import re
import shlex
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

from .io_utils import atomic_write_text, sha256_file

__all__ = [
    "ENV_CACHE",
    "ENV_MIRROR",
    "ENV_OFFLINE",
    "Asset",
    "AssetError",
    "UnknownAssetError",
    "Registry",
    "default_registry",
    "default_cache_dir",
    "default_mirror_dir",
    "offline_from_env",
    "cache_path",
    "fetch",
    "fetch_many",
    "registry_from_sha256sums",
    "regenerate_registry",
    "main",
]

log = logging.getLogger(__name__)

ENV_CACHE = "STYLERIG_LITE_CACHE"
ENV_MIRROR = "STYLERIG_LITE_ASSET_MIRROR"
ENV_OFFLINE = "STYLERIG_LITE_OFFLINE"

ICT_FACEKIT_REPOSITORY = "ICT-VGL/ICT-FaceKit"
ICT_FACEKIT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_FACEKIT_URL_BASE = f"https://raw.githubusercontent.com/{ICT_FACEKIT_REPOSITORY}/{ICT_FACEKIT_COMMIT}/"
ICT_FACEKIT_LICENCE = "MIT (ICT-FaceKit)"

# Files of ICT-FaceKit that SHA256SUMS does not list. The LICENSE bytes were
# compared with the upstream repository's root LICENSE (identical, 1096 bytes).
_ICT_FACEKIT_EXTRA_FILES: dict[str, tuple[str, int]] = {
    "LICENSE": ("b20a78d8fc51657e14f3e00c8abb538d786ad00aa63210328c22565e583167e1", 1096),
}

REGISTRY_FORMAT = 1
_REGISTRY_RESOURCE = ("data", "asset_registry.json")
_STAMP_SUFFIX = ".sha256"
_CHUNK = 1 << 20  # 1 MiB per read: large enough to be fast, small enough for a smooth progress bar
DEFAULT_TIMEOUT_S = 60.0

_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

PathLike = Union[str, "os.PathLike[str]"]
# ``None`` = read the environment; ``False`` = explicitly no mirror.
MirrorArg = Union[PathLike, None, bool]
RegistryArg = Union["Registry", PathLike, None]


# --------------------------------------------------------------------------------------------------
# Registry


def _check_relative_path(value: str, what: str) -> None:
    # Keys and mirror paths become file paths: refuse anything that could escape the cache or mirror.
    if not _KEY_RE.match(value) or any(part in (".", "..") for part in value.split("/")):
        raise ValueError(
            f"{what} {value!r} is not a safe relative path: use '/'-separated names made of "
            f"letters, digits, '_', '-', '.' (no '..', no leading '/')"
        )


@dataclasses.dataclass(frozen=True)
class Asset:
    """One external file: where upstream serves it and what its bytes must hash to."""

    key: str  # e.g. "ict-facekit/FaceXModel/identity000.obj"; also its path inside the cache
    url: str  # upstream URL pinned to a commit
    sha256: str  # of the file exactly as upstream serves it (uncompressed)
    size: int  # bytes, same
    mirror_path: str  # path inside the mirror folder, usually key + ".gz"
    licence: str = ""

    def __post_init__(self) -> None:
        _check_relative_path(self.key, "asset key")
        _check_relative_path(self.mirror_path, f"mirror_path of {self.key!r}")
        if self.key.endswith((_STAMP_SUFFIX, ".part")):
            raise ValueError(f"asset key {self.key!r} must not end in {_STAMP_SUFFIX!r} or '.part' (reserved in the cache)")
        if not _SHA256_RE.match(self.sha256):
            raise ValueError(f"sha256 of {self.key!r} must be 64 lowercase hex digits, got {self.sha256!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"size of {self.key!r} must be a non-negative int (bytes), got {self.size!r}")
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"url of {self.key!r} must start with https:// or http://, got {self.url!r}")

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "sha256": self.sha256, "size": self.size,
                "mirror_path": self.mirror_path, "licence": self.licence}

    @classmethod
    def from_json(cls, key: str, entry: Mapping[str, Any]) -> "Asset":
        missing = {"url", "sha256", "size"} - set(entry)
        if missing:
            raise ValueError(f"registry entry {key!r} lacks field(s) {sorted(missing)}")
        return cls(key=key, url=entry["url"], sha256=entry["sha256"], size=entry["size"],
                   mirror_path=entry.get("mirror_path") or key + ".gz", licence=entry.get("licence", ""))


class Registry(Mapping[str, Asset]):
    """Read-only mapping key -> :class:`Asset`. ``registry[key]`` on an unknown key raises
    :class:`UnknownAssetError` (a ``KeyError``) that lists close matches."""

    def __init__(self, assets: Iterable[Asset], *, sources: Optional[Mapping[str, Any]] = None) -> None:
        self._assets: dict[str, Asset] = {}
        for asset in assets:
            if asset.key in self._assets:
                raise ValueError(f"asset key {asset.key!r} appears twice in the registry")
            self._assets[asset.key] = asset
        self.sources: dict[str, Any] = dict(sources or {})

    def __getitem__(self, key: str) -> Asset:
        try:
            return self._assets[key]
        except KeyError:
            raise UnknownAssetError(key, difflib.get_close_matches(key, list(self._assets), n=5, cutoff=0.6)) from None

    def __contains__(self, key: object) -> bool:
        return key in self._assets

    def __iter__(self) -> Iterator[str]:
        return iter(self._assets)

    def __len__(self) -> int:
        return len(self._assets)

    def __repr__(self) -> str:
        return f"Registry({len(self)} assets)"

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> "Registry":
        if data.get("format") != REGISTRY_FORMAT or not isinstance(data.get("assets"), Mapping):
            raise ValueError(f"not an asset registry of format {REGISTRY_FORMAT}: expected "
                             f"{{'format': {REGISTRY_FORMAT}, 'assets': {{key: entry}}}}")
        return cls((Asset.from_json(k, v) for k, v in data["assets"].items()), sources=data.get("sources"))

    @classmethod
    def load(cls, path: PathLike) -> "Registry":
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"asset registry {path} does not exist; pass registry=None for the built-in one") from None
        try:
            return cls.from_json_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": REGISTRY_FORMAT,
            "comment": "Generated by `python -m stylerig_lite.assets --regenerate-registry SHA256SUMS`; "
                       "sha256 and size are of the file exactly as upstream serves it (uncompressed).",
            "sources": self.sources,
            "assets": {k: self._assets[k].to_json() for k in sorted(self._assets)},
        }

    def save(self, path: PathLike) -> None:
        text = json.dumps(self.to_json_dict(), indent=2, sort_keys=False) + "\n"
        atomic_write_text(Path(path), text)


_default_registry: Optional[Registry] = None


def default_registry() -> Registry:
    """The committed registry ``stylerig_lite/data/asset_registry.json`` (loaded once)."""
    global _default_registry
    if _default_registry is None:
        resource = importlib.resources.files("stylerig_lite").joinpath(*_REGISTRY_RESOURCE)
        _default_registry = Registry.from_json_dict(json.loads(resource.read_text(encoding="utf-8")))
    return _default_registry


def _resolve_registry(registry: RegistryArg) -> Registry:
    if registry is None:
        return default_registry()
    if isinstance(registry, Registry):
        return registry
    if isinstance(registry, (str, os.PathLike)):
        return Registry.load(registry)
    raise TypeError(f"registry must be a Registry, a path to a registry JSON file, or None; got {type(registry).__name__}")


# --------------------------------------------------------------------------------------------------
# Registry generation from a SHA256SUMS file


_SUMS_LINE_RE = re.compile(r"^([0-9a-f]{64})  (\S+)  (\d+)$")


def registry_from_sha256sums(
    sha256sums: PathLike,
    *,
    prefix: str = "ict-facekit",
    url_base: str = ICT_FACEKIT_URL_BASE,
    licence: str = ICT_FACEKIT_LICENCE,
    extra_files: Optional[Mapping[str, tuple[str, int]]] = None,
) -> Registry:
    """Build a registry from lines ``<sha256>  <relative path>  <size>``.

    Key = ``<prefix>/<relative path>``, URL = ``url_base + <relative path>``, mirror
    path = key + ``.gz``. ``extra_files`` maps more relative paths to (sha256, size);
    by default the ICT-FaceKit ``LICENSE`` is added when ``prefix`` is ``ict-facekit``.
    """
    sha256sums = Path(sha256sums)
    if extra_files is None:
        extra_files = _ICT_FACEKIT_EXTRA_FILES if prefix == "ict-facekit" else {}
    rows: list[tuple[str, str, int]] = []
    with open(sha256sums, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            m = _SUMS_LINE_RE.match(line)
            if not m:
                raise ValueError(f"{sha256sums}:{lineno}: expected '<sha256>  <path>  <size>' "
                                 f"(two spaces between fields), got {line!r}")
            rows.append((m.group(2), m.group(1), int(m.group(3))))
    rows += [(name, sha, size) for name, (sha, size) in extra_files.items()]
    if not rows:
        raise ValueError(f"{sha256sums} lists no files")
    assets = [Asset(key=f"{prefix}/{name}", url=url_base + name, sha256=sha, size=size,
                    mirror_path=f"{prefix}/{name}.gz", licence=licence) for name, sha, size in rows]
    sources = {prefix: {"url_base": url_base, "licence": licence}}
    if url_base == ICT_FACEKIT_URL_BASE:
        sources[prefix].update(repository=f"https://github.com/{ICT_FACEKIT_REPOSITORY}", commit=ICT_FACEKIT_COMMIT)
    return Registry(assets, sources=sources)


def _package_registry_path() -> Path:
    return Path(__file__).resolve().parent.joinpath(*_REGISTRY_RESOURCE)


def regenerate_registry(sha256sums: PathLike, output: Optional[PathLike] = None) -> Registry:
    """Rebuild the ICT-FaceKit registry from ``SHA256SUMS`` and write it (atomically) to
    ``output`` (default: the package's ``data/asset_registry.json``)."""
    global _default_registry
    registry = registry_from_sha256sums(sha256sums)
    out = Path(output) if output is not None else _package_registry_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    registry.save(out)
    if output is None:
        _default_registry = None  # the committed file changed: reload on next use
    return registry


# --------------------------------------------------------------------------------------------------
# Errors


class AssetError(RuntimeError):
    """An asset could not be provided. The message says which file, from where, and how to fix it."""

    def __init__(self, reason: str, asset: Optional[Asset] = None, cache_file: Optional[Path] = None,
                 notes: Iterable[str] = ()) -> None:
        self.reason = reason
        self.asset = asset
        self.cache_file = cache_file
        self.notes = list(notes)
        super().__init__(self._format())

    def _format(self) -> str:
        if self.asset is None:
            return self.reason
        a = self.asset
        lines = [
            f"could not provide asset {a.key!r}: {self.reason}",
            f"  upstream URL : {a.url}",
            f"  expected     : sha256 {a.sha256}, {a.size} bytes",
            f"  cache path   : {self.cache_file}",
        ]
        lines += [f"  note         : {n}" for n in self.notes]
        mirror_name = a.mirror_path[:-3] if a.mirror_path.endswith(".gz") else a.mirror_path
        lines += [
            "To provide the file by hand, do one of:",
            "  - download the URL above (uncompressed, exactly as served) to the cache path, e.g.",
            f"      curl -L --create-dirs -o {shlex.quote(str(self.cache_file))} {shlex.quote(a.url)}",
            f"  - or set {ENV_MIRROR} to a folder that holds {a.mirror_path!r} (gzip) or {mirror_name!r}",
            "    (developers of StyleRig Lite: ../shared/assets relative to the repository root).",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        # Explicit so that subclasses that also derive from KeyError do not print repr(message).
        return self.args[0] if self.args else ""


class UnknownAssetError(AssetError, KeyError):
    """The key is not in the registry. Also a ``KeyError``, so ``Mapping.get`` and ``in`` work."""

    def __init__(self, key: str, close_matches: list[str]) -> None:
        self.key = key
        self.close_matches = close_matches
        hint = (" Did you mean " + ", ".join(repr(m) for m in close_matches) + "?") if close_matches \
            else " List the known keys with `python -m stylerig_lite.assets --list`."
        super().__init__(f"unknown asset key {key!r}: it is not in the asset registry.{hint}")


# --------------------------------------------------------------------------------------------------
# Locations from the environment


def default_cache_dir() -> Path:
    """``$STYLERIG_LITE_CACHE``, else ``$XDG_CACHE_HOME/stylerig_lite``, else ``~/.cache/stylerig_lite``."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "stylerig_lite"
    return Path.home() / ".cache" / "stylerig_lite"


def default_mirror_dir() -> Optional[Path]:
    """``$STYLERIG_LITE_ASSET_MIRROR`` as a path, or ``None`` when unset or empty."""
    env = os.environ.get(ENV_MIRROR, "").strip()
    return Path(env).expanduser() if env else None


def offline_from_env() -> bool:
    """True when ``$STYLERIG_LITE_OFFLINE`` is 1/true/yes/on (case-insensitive)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


def _resolve_cache_dir(cache_dir: Optional[PathLike]) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _resolve_mirror_dir(mirror_dir: MirrorArg) -> Optional[Path]:
    if mirror_dir is None or mirror_dir is True:
        return default_mirror_dir()
    if mirror_dir is False:
        return None
    return Path(mirror_dir).expanduser()


def cache_path(key: str, *, registry: RegistryArg = None, cache_dir: Optional[PathLike] = None) -> Path:
    """Where ``key`` lives (or would live) in the cache. Does not fetch anything."""
    asset = _resolve_registry(registry)[key]
    return _resolve_cache_dir(cache_dir) / asset.key


# --------------------------------------------------------------------------------------------------
# Verification and atomic writes


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + _STAMP_SUFFIX)


def _write_stamp(path: Path, asset: Asset) -> None:
    st = path.stat()
    stamp = {"sha256": asset.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        atomic_write_text(_stamp_path(path), json.dumps(stamp) + "\n")
    except OSError as e:  # a missing stamp only costs a rehash next time
        log.warning("could not write verification stamp for %s: %s", path, e)


def _stamp_is_valid(path: Path, asset: Asset) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (isinstance(stamp, dict) and stamp.get("sha256") == asset.sha256 and stamp.get("size") == asset.size
            and st.st_size == asset.size and stamp.get("mtime_ns") == st.st_mtime_ns)


def _check_cache(asset: Asset, target: Path, notes: list[str]) -> bool:
    """True if ``target`` holds the right bytes. A wrong file (and its stamp) is removed."""
    if not target.is_file():
        return False
    if _stamp_is_valid(target, asset):
        return True
    size = target.stat().st_size
    if size == asset.size:
        digest = sha256_file(target)
        if digest == asset.sha256:
            _write_stamp(target, asset)
            return True
        problem = f"sha256 {digest}"
    else:
        problem = f"{size} bytes"
    note = f"removed a corrupt file from the cache ({problem}; expected sha256 {asset.sha256}, {asset.size} bytes)"
    log.warning("%s: %s", target, note)
    notes.append(note)
    _unlink_quietly(target)
    _unlink_quietly(_stamp_path(target))
    return False


class _Progress:
    """Thin wrapper over an optional tqdm bar so the fetch code never checks for ``None``."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self._bar: Any = None
        if enabled and total > 0:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                                 dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _stream_into_cache(
    asset: Asset,
    target: Path,
    source: IO[bytes],
    bar: _Progress,
    on_bad: Callable[[str], AssetError],
    expected_length: Optional[int] = None,
) -> None:
    """Copy ``source`` into a temp file beside ``target``, verify size and sha256, ``os.replace``.

    ``on_bad(reason)`` builds the error to raise; read errors from ``source`` propagate to the
    caller (which knows whether they mean a broken gzip or a broken connection). The temp file
    is removed on every failure, so ``target`` only ever holds verified bytes.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as e:
        raise on_bad(f"cannot write into the cache folder {target.parent} ({e}); "
                     f"set {ENV_CACHE} to a writable folder") from e
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                received += len(chunk)
                if received > asset.size:
                    raise on_bad(f"received more than the expected {asset.size} bytes")
                h.update(chunk)
                try:
                    out.write(chunk)
                except OSError as e:  # e.g. disk full: not the source's fault, say so
                    raise on_bad(f"cannot write into the cache ({e}); free some space or set {ENV_CACHE}") from e
                bar.update(len(chunk))
        if expected_length is not None and received < expected_length:
            raise on_bad(f"transfer truncated: received {received} of {expected_length} bytes "
                         f"announced by the server (Content-Length)")
        if received != asset.size:
            raise on_bad(f"transfer truncated or wrong file: received {received} bytes, expected {asset.size}")
        digest = h.hexdigest()
        if digest != asset.sha256:
            raise on_bad(f"sha256 mismatch: got {digest}, expected {asset.sha256}")
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _write_stamp(target, asset)


# --------------------------------------------------------------------------------------------------
# Sources: mirror and download


def _mirror_candidates(asset: Asset, mirror: Path) -> list[tuple[Path, bool]]:
    """(path, is_gzip) pairs to try, compressed first."""
    if asset.mirror_path.endswith(".gz"):
        return [(mirror / asset.mirror_path, True), (mirror / asset.mirror_path[:-3], False)]
    return [(mirror / asset.mirror_path, False)]


def _from_mirror(asset: Asset, target: Path, mirror: Path, bar: _Progress, notes: list[str]) -> bool:
    for path, is_gzip in _mirror_candidates(asset, mirror):
        if not path.is_file():
            continue

        def bad(reason: str, path: Path = path) -> AssetError:
            return AssetError(f"the mirror file {path} is bad ({reason}); replace or delete it, "
                              f"or unset {ENV_MIRROR} to download instead", asset, target, notes)

        if not is_gzip and path.stat().st_size != asset.size:
            raise bad(f"{path.stat().st_size} bytes, expected {asset.size}")
        try:
            with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as src:
                _stream_into_cache(asset, target, src, bar, bad)  # type: ignore[arg-type]
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise bad(f"not a valid gzip file: {e}") from e
        except OSError as e:
            raise bad(f"cannot be read: {e}") from e
        log.info("copied %s from mirror %s", asset.key, path)
        return True
    notes.append(f"not in the mirror: looked for {' and '.join(str(p) for p, _ in _mirror_candidates(asset, mirror))}")
    return False


def _describe_url_error(e: BaseException, url: str) -> str:
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    host = urllib.request.urlparse(url).hostname
    if isinstance(reason, socket.gaierror):
        return f"could not resolve host {host!r} (DNS failure or no network): {reason}"
    if isinstance(reason, ConnectionRefusedError):
        return f"connection to {host!r} refused (server down or no network): {reason}"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"connection to {host!r} timed out: {reason}"
    return f"download failed ({type(reason).__name__}): {reason}"


def _download(asset: Asset, target: Path, bar: _Progress, timeout: float, notes: list[str]) -> None:
    def bad(reason: str) -> AssetError:
        return AssetError(reason, asset, target, notes)

    request = urllib.request.Request(asset.url, headers={
        "User-Agent": "stylerig_lite-assets (python urllib)",
        "Accept-Encoding": "identity",  # the hash is of the raw bytes: no transparent compression
    })
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        raise bad(f"the server answered HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise bad(_describe_url_error(e, asset.url)) from e
    with response:
        header = response.headers.get("Content-Length")
        length: Optional[int] = None
        if header is not None and header.strip().isdigit():
            length = int(header)
            if length != asset.size:
                # Catches e.g. an HTML error page or a git-LFS pointer before downloading it.
                raise bad(f"the server announces {length} bytes (Content-Length), the registry expects {asset.size}")
        try:
            _stream_into_cache(asset, target, response, bar, bad, expected_length=length)
        except http.client.IncompleteRead as e:
            got = len(e.partial) if isinstance(e.partial, (bytes, bytearray)) else "fewer"
            raise bad(f"transfer truncated: the connection closed early ({got} bytes in the last read, "
                      f"{length if length is not None else asset.size} expected in total)") from e
        except (OSError, http.client.HTTPException) as e:
            raise bad("transfer interrupted: " + _describe_url_error(e, asset.url)) from e
    log.info("downloaded %s from %s", asset.key, asset.url)


# --------------------------------------------------------------------------------------------------
# Public fetch API


def _obtain(asset: Asset, target: Path, mirror: Optional[Path], offline: bool, timeout: float,
            bar: _Progress, notes: list[str]) -> None:
    """Fill ``target`` from the mirror or the network (the cache was already checked)."""
    if mirror is not None:
        if _from_mirror(asset, target, mirror, bar, notes):
            return
    else:
        notes.append(f"no mirror configured ({ENV_MIRROR} is not set)")
    if offline:
        raise AssetError(f"downloads are disabled ({ENV_OFFLINE}=1) and the file is neither in the cache "
                         f"nor in the mirror", asset, target, notes)
    _download(asset, target, bar, timeout, notes)


def fetch(
    key: str,
    *,
    progress: bool = True,
    registry: RegistryArg = None,
    cache_dir: Optional[PathLike] = None,
    mirror_dir: MirrorArg = None,
    offline: Optional[bool] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Return the path of a verified, uncompressed copy of asset ``key`` in the cache.

    Looks in the cache, then the mirror, then downloads (see the module docstring).
    ``registry``: a :class:`Registry` or path to a registry JSON (default: the built-in one).
    ``cache_dir`` (default ``$STYLERIG_LITE_CACHE`` or the XDG cache), ``mirror_dir`` (default
    ``$STYLERIG_LITE_ASSET_MIRROR``; ``False`` = no mirror), ``offline`` (default
    ``$STYLERIG_LITE_OFFLINE``), ``timeout`` in seconds per network operation.
    Raises :class:`AssetError` (:class:`UnknownAssetError` for a key not in the registry).
    """
    return fetch_many([key], progress=progress, registry=registry, cache_dir=cache_dir,
                      mirror_dir=mirror_dir, offline=offline, timeout=timeout)[0]


def fetch_many(
    keys: Iterable[str],
    *,
    progress: bool = True,
    registry: RegistryArg = None,
    cache_dir: Optional[PathLike] = None,
    mirror_dir: MirrorArg = None,
    offline: Optional[bool] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Path]:
    """Fetch several assets; returns their cache paths in the order of ``keys``, with one
    progress bar over the bytes still missing. Unknown keys are reported before anything
    is fetched. Options as for :func:`fetch`."""
    reg = _resolve_registry(registry)
    keys = list(keys)
    assets = [reg[k] for k in dict.fromkeys(keys)]  # each file once, even if asked twice
    cache = _resolve_cache_dir(cache_dir)
    mirror = _resolve_mirror_dir(mirror_dir)
    offline = offline_from_env() if offline is None else offline

    paths: dict[str, Path] = {}
    missing: list[tuple[Asset, Path, list[str]]] = []
    for asset in assets:
        target = cache / asset.key
        notes: list[str] = []
        paths[asset.key] = target
        if not _check_cache(asset, target, notes):
            missing.append((asset, target, notes))

    if missing:
        bar = _Progress(sum(a.size for a, _, _ in missing), f"stylerig_lite assets ({len(missing)} files)", progress)
        try:
            for i, (asset, target, notes) in enumerate(missing, 1):
                bar.set_description(f"{asset.key.rsplit('/', 1)[-1]} ({i}/{len(missing)})")
                _obtain(asset, target, mirror, offline, timeout, bar, notes)
        finally:
            bar.close()
    return [paths[k] for k in keys]


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylerig_lite.assets",
                                     description="Fetch the project's third-party files into the cache.")
    parser.add_argument("keys", nargs="*", help="asset keys to fetch (prints their cache paths)")
    parser.add_argument("--all", action="store_true", help="fetch every asset in the registry")
    parser.add_argument("--list", action="store_true", help="list the registry: key, size, licence")
    parser.add_argument("--regenerate-registry", metavar="SHA256SUMS",
                        help="rebuild the registry JSON from an ICT-FaceKit SHA256SUMS file")
    parser.add_argument("--output", metavar="PATH",
                        help="with --regenerate-registry: where to write (default: the package's data file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.regenerate_registry:
        reg = regenerate_registry(args.regenerate_registry, args.output)
        print(f"wrote {len(reg)} assets to {args.output or _package_registry_path()}")
        return 0
    registry = default_registry()
    if args.list:
        for key, asset in registry.items():
            print(f"{key}\t{asset.size}\t{asset.licence}")
        return 0
    keys = list(registry) if args.all else args.keys
    if not keys:
        parser.print_usage(sys.stderr)
        return 2
    try:
        paths = fetch_many(keys, registry=registry, progress=not args.no_progress)
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
