"""Tests for stylerig_lite.assets against a real HTTP server on 127.0.0.1 (no mocked downloads).

A tiny ``http.server`` in a thread serves a temporary folder on an ephemeral port and counts
requests; a path prefix ``/truncated/`` makes it send half the body under a full Content-Length.
Each test gets its own cache and mirror folders and a registry built for it, so the developer's
real cache and environment are never touched.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stylerig_lite import assets
from stylerig_lite.assets import Asset, AssetError, Registry, UnknownAssetError, fetch, fetch_many

PAYLOAD = b"StyleRig Lite test asset\n" * 4000  # 100 kB: several read chunks would be 1 MiB, so one chunk
OTHER = bytes(range(256)) * 1000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- local HTTP server


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.server.request_paths.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path[len("/truncated/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))  # a lie: only half follows
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Some tests make the client hang up early (e.g. on a wrong Content-Length): the
        # server's broken pipe is expected there and not worth a traceback on stderr.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class LocalServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.httpd = _QuietServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.httpd.request_paths = []  # type: ignore[attr-defined]
        # A short poll interval keeps shutdown() (and so each test's teardown) fast.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def requests(self) -> list[str]:
        return self.httpd.request_paths  # type: ignore[attr-defined]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def put(self, name: str, data: bytes) -> None:
        (self.root / name).write_bytes(data)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    root = tmp_path / "served"
    root.mkdir()
    srv = LocalServer(root)
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(cache, mirror) folders; the asset environment variables are cleared for the test."""
    for var in (assets.ENV_CACHE, assets.ENV_MIRROR, assets.ENV_OFFLINE):
        monkeypatch.delenv(var, raising=False)
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    mirror.mkdir()
    return cache, mirror


def make_asset(key: str, url: str, data: bytes, **kw: object) -> Asset:
    fields = dict(key=key, url=url, sha256=sha256(data), size=len(data), mirror_path=key + ".gz", licence="test")
    fields.update(kw)
    return Asset(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- download


def test_download_lands_in_cache_and_second_fetch_uses_cache(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    server.put("a.bin", PAYLOAD)
    reg = Registry([make_asset("test/sub/a.bin", server.url("a.bin"), PAYLOAD)])

    path = fetch("test/sub/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert path == cache / "test" / "sub" / "a.bin"
    assert sha256(path.read_bytes()) == sha256(PAYLOAD)
    assert server.requests == ["/a.bin"]
    # Only the file and its verification stamp remain: no temp files.
    assert files_under(cache) == [path, path.with_name("a.bin.sha256")]

    again = fetch("test/sub/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert again == path
    assert server.requests == ["/a.bin"]  # served from the cache


def test_progress_bar_path_and_fetch_many(server: LocalServer, dirs: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cache, mirror = dirs
    server.put("a.bin", PAYLOAD)
    (mirror / "test").mkdir()
    (mirror / "test" / "b.bin.gz").write_bytes(gzip.compress(OTHER))
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD),
                    make_asset("test/b.bin", server.url("missing-on-server"), OTHER)])

    paths = fetch_many(["test/b.bin", "test/a.bin", "test/b.bin"], registry=reg, cache_dir=cache,
                       mirror_dir=mirror, progress=True)
    assert paths == [cache / "test" / "b.bin", cache / "test" / "a.bin", cache / "test" / "b.bin"]
    assert paths[1].read_bytes() == PAYLOAD
    assert paths[0].read_bytes() == OTHER
    assert server.requests == ["/a.bin"]  # b came from the mirror


def test_hash_mismatch_leaves_nothing_in_cache(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    server.put("a.bin", PAYLOAD)
    wrong = "0" * 64
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD, sha256=wrong)])

    with pytest.raises(AssetError, match="sha256 mismatch") as info:
        fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    message = str(info.value)
    assert sha256(PAYLOAD) in message and wrong in message
    assert files_under(cache) == []


def test_error_message_says_how_to_fix(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    asset = make_asset("test/gone.bin", server.url("gone.bin"), PAYLOAD)
    with pytest.raises(AssetError) as info:
        fetch("test/gone.bin", registry=Registry([asset]), cache_dir=cache, mirror_dir=mirror, progress=False)
    message = str(info.value)
    for needle in ("'test/gone.bin'", asset.url, asset.sha256, str(len(PAYLOAD)),
                   str(cache / "test" / "gone.bin"), assets.ENV_MIRROR, "HTTP 404", "curl"):
        assert needle in message, f"{needle!r} missing from:\n{message}"
    assert info.value.asset == asset
    assert files_under(cache) == []


def test_truncated_transfer_with_lying_content_length(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    server.put("a.bin", PAYLOAD)
    reg = Registry([make_asset("test/a.bin", server.url("truncated/a.bin"), PAYLOAD)])
    with pytest.raises(AssetError, match="truncated"):
        fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert server.requests == ["/truncated/a.bin"]
    assert files_under(cache) == []


def test_server_serving_wrong_size_is_refused(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    server.put("short.bin", PAYLOAD[:100])  # honest Content-Length, but not the registry's file
    reg = Registry([make_asset("test/a.bin", server.url("short.bin"), PAYLOAD)])
    with pytest.raises(AssetError, match=f"announces 100 bytes.*expects {len(PAYLOAD)}"):
        fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert files_under(cache) == []


def test_server_down_connection_refused(dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    # A socket that is bound but not listening: nobody can take the port, and connecting is refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        reg = Registry([make_asset("test/a.bin", f"http://127.0.0.1:{port}/a.bin", PAYLOAD)])
        with pytest.raises(AssetError, match="refused") as info:
            fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert f"127.0.0.1:{port}/a.bin" in str(info.value)
    assert files_under(cache) == []


def test_server_that_never_answers_times_out(dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # the kernel completes the handshake; nobody ever answers
        port = sock.getsockname()[1]
        reg = Registry([make_asset("test/a.bin", f"http://127.0.0.1:{port}/a.bin", PAYLOAD)])
        with pytest.raises(AssetError, match="timed out"):
            fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False, timeout=0.3)
    assert files_under(cache) == []


def test_unwritable_cache_is_reported(server: LocalServer, dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _, mirror = dirs
    server.put("a.bin", PAYLOAD)
    not_a_folder = tmp_path / "cache-is-a-file"
    not_a_folder.write_text("")
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD)])
    with pytest.raises(AssetError, match=f"cannot write into the cache folder.*{assets.ENV_CACHE}"):
        fetch("test/a.bin", registry=reg, cache_dir=not_a_folder, mirror_dir=mirror, progress=False)


# ---------------------------------------------------------------- cache stamps


def test_corrupt_cache_file_is_replaced(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    server.put("a.bin", PAYLOAD)
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD)])
    target = cache / "test" / "a.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the right bytes")

    path = fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/a.bin"]


def test_stamp_trusted_only_while_size_and_mtime_match(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    server.put("a.bin", PAYLOAD)
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD)])
    kw = dict(registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    path = fetch("test/a.bin", **kw)  # type: ignore[arg-type]
    stamp = json.loads(path.with_name("a.bin.sha256").read_text())
    assert stamp["sha256"] == sha256(PAYLOAD) and stamp["size"] == len(PAYLOAD)

    # Same size, same mtime, different bytes: the stamp is trusted, so no rehash and no request.
    st = path.stat()
    tampered = b"X" + PAYLOAD[1:]
    path.write_bytes(tampered)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fetch("test/a.bin", **kw).read_bytes() == tampered  # type: ignore[arg-type]
    assert server.requests == ["/a.bin"]

    # A new mtime invalidates the stamp: the file is rehashed, found wrong and downloaded again.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fetch("test/a.bin", **kw).read_bytes() == PAYLOAD  # type: ignore[arg-type]
    assert server.requests == ["/a.bin", "/a.bin"]


# ---------------------------------------------------------------- mirror and offline


def test_mirror_gz_hit_needs_no_network(server: LocalServer, dirs: tuple[Path, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache, mirror = dirs
    (mirror / "test").mkdir()
    (mirror / "test" / "a.bin.gz").write_bytes(gzip.compress(PAYLOAD))
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD)])  # not on the server
    monkeypatch.setenv(assets.ENV_MIRROR, str(mirror))  # via the environment this time
    monkeypatch.setenv(assets.ENV_OFFLINE, "1")

    path = fetch("test/a.bin", registry=reg, cache_dir=cache, progress=False)
    assert path.read_bytes() == PAYLOAD  # stored uncompressed
    assert server.requests == []
    assert files_under(cache) == [path, path.with_name("a.bin.sha256")]


def test_mirror_uncompressed_copy_is_accepted(server: LocalServer, dirs: tuple[Path, Path]) -> None:
    cache, mirror = dirs
    (mirror / "test").mkdir()
    (mirror / "test" / "a.bin").write_bytes(PAYLOAD)
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD)])
    path = fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, offline=True, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == []


@pytest.mark.parametrize("content, problem", [
    (b"this is not gzip data at all", "not a valid gzip"),
    (gzip.compress(PAYLOAD)[:-200], "not a valid gzip"),  # cut short
    (gzip.compress(b"other bytes of the same size?"), "truncated or wrong file"),
    (gzip.compress(PAYLOAD[:-1] + b"!"), "sha256 mismatch"),
])
def test_corrupt_mirror_file_is_named(server: LocalServer, dirs: tuple[Path, Path], content: bytes, problem: str) -> None:
    cache, mirror = dirs
    bad = mirror / "test" / "a.bin.gz"
    bad.parent.mkdir()
    bad.write_bytes(content)
    server.put("a.bin", PAYLOAD)  # the server has it, but a bad mirror must not be skipped silently
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD)])
    with pytest.raises(AssetError, match=problem) as info:
        fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert f"mirror file {bad} is bad" in str(info.value)
    assert server.requests == []
    assert files_under(cache) == []


def test_offline_env_forbids_download(server: LocalServer, dirs: tuple[Path, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache, mirror = dirs
    server.put("a.bin", PAYLOAD)
    reg = Registry([make_asset("test/a.bin", server.url("a.bin"), PAYLOAD)])
    monkeypatch.setenv(assets.ENV_OFFLINE, "1")
    with pytest.raises(AssetError, match=f"downloads are disabled \\({assets.ENV_OFFLINE}=1\\)") as info:
        fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, progress=False)
    assert "not in the mirror" in str(info.value)
    assert server.requests == []
    # The explicit argument wins over the environment.
    assert fetch("test/a.bin", registry=reg, cache_dir=cache, mirror_dir=mirror, offline=False,
                 progress=False).read_bytes() == PAYLOAD


# ---------------------------------------------------------------- registry, keys, environment


def test_unknown_key_lists_close_matches(dirs: tuple[Path, Path]) -> None:
    cache, _ = dirs
    reg = Registry([make_asset(f"test/identity{i:03d}.obj", "http://127.0.0.1:9/x", PAYLOAD) for i in range(3)])
    with pytest.raises(UnknownAssetError) as info:
        fetch("test/identiy001.obj", registry=reg, cache_dir=cache, progress=False)
    message = str(info.value)
    assert "unknown asset key 'test/identiy001.obj'" in message
    assert "'test/identity001.obj'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, AssetError)
    assert reg.get("test/nothing") is None and "test/nothing" not in reg
    assert not cache.exists()  # nothing fetched, nothing created


def test_unsafe_keys_are_rejected() -> None:
    for key in ("../etc/passwd", "/abs/path", "a//b", "a/./b", "a/b.sha256"):
        with pytest.raises(ValueError):
            make_asset(key, "http://127.0.0.1:9/x", PAYLOAD)
    with pytest.raises(ValueError, match="sha256"):
        make_asset("ok/key", "http://127.0.0.1:9/x", PAYLOAD, sha256="ABC")


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(assets.ENV_CACHE, str(tmp_path / "c"))
    assert assets.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(assets.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.default_cache_dir() == tmp_path / "xdg" / "stylerig_lite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.default_cache_dir() == tmp_path / "home" / ".cache" / "stylerig_lite"
    monkeypatch.delenv(assets.ENV_MIRROR, raising=False)
    assert assets.default_mirror_dir() is None
    monkeypatch.setenv(assets.ENV_OFFLINE, "0")
    assert assets.offline_from_env() is False
    monkeypatch.setenv(assets.ENV_OFFLINE, "true")
    assert assets.offline_from_env() is True


def test_regenerate_registry_round_trip(tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{sha256(PAYLOAD)}  FaceXModel/a.obj  {len(PAYLOAD)}\n"
                    f"{sha256(OTHER)}  FaceXModel/b.json  {len(OTHER)}\n")
    out = tmp_path / "registry.json"
    assert assets.main(["--regenerate-registry", str(sums), "--output", str(out)]) == 0
    reg = Registry.load(out)
    assert len(reg) == 3  # two lines + the ICT-FaceKit LICENSE
    a = reg["ict-facekit/FaceXModel/a.obj"]
    assert a.url == assets.ICT_FACEKIT_URL_BASE + "FaceXModel/a.obj"
    assert (a.sha256, a.size, a.mirror_path, a.licence) == (
        sha256(PAYLOAD), len(PAYLOAD), "ict-facekit/FaceXModel/a.obj.gz", "MIT (ICT-FaceKit)")
    assert assets.ICT_FACEKIT_COMMIT in a.url

    sums.write_text("not a checksum line\n")
    with pytest.raises(ValueError, match="SHA256SUMS:1"):
        assets.registry_from_sha256sums(sums)


# ---------------------------------------------------------------- the real registry and shared mirror


def shared_mirror() -> Path:
    env = os.environ.get(assets.ENV_MIRROR, "").strip()
    mirror = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "assets"
    if (mirror / "ict-facekit" / "SHA256SUMS").is_file():
        return mirror
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the shared asset mirror is missing at {mirror}; set {assets.ENV_MIRROR}")
    pytest.skip(f"shared asset mirror not found at {mirror}")


def test_real_registry_matches_shared_sha256sums(tmp_path: Path) -> None:
    mirror = shared_mirror()
    committed = assets.default_registry()
    rebuilt = assets.registry_from_sha256sums(mirror / "ict-facekit" / "SHA256SUMS")
    assert dict(rebuilt) == dict(committed)
    assert len(committed) == 161  # 160 FaceXModel files + LICENSE
    for asset in committed.values():  # every file is in the mirror, compressed or not
        gz = mirror / asset.mirror_path
        assert gz.is_file() or gz.with_suffix("").is_file(), asset.key


@pytest.mark.parametrize("key", [
    "ict-facekit/FaceXModel/vertex_indices.json",  # stored uncompressed in the mirror
    "ict-facekit/FaceXModel/eyeBlink_L.obj",  # stored as .obj.gz
    "ict-facekit/LICENSE",
])
def test_fetch_real_asset_from_shared_mirror(key: str, tmp_path: Path) -> None:
    mirror = shared_mirror()
    path = fetch(key, cache_dir=tmp_path / "cache", mirror_dir=mirror, offline=True, progress=False)
    asset = assets.default_registry()[key]
    assert path == tmp_path / "cache" / key
    assert sha256(path.read_bytes()) == asset.sha256
    assert path.stat().st_size == asset.size
