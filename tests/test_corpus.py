"""The (w, I_w) corpus: resumable, deterministic shards, a Dataset that matches G, clear errors.

Tiny randomly initialised networks stand in for the embedded G and F: the corpus
code does not care what the networks learned, only that they are deterministic.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from stylerig_lite import corpus as corpus_mod
from stylerig_lite.corpus import (CorpusDataset, CorpusError, estimate_images, make_corpus, module_sha256, sample_latents,
                                  sample_pairs, shard_path, synthesize)
from stylerig_lite.reconstruction import ReconstructionNet, tiny_config
from stylerig_lite.stylegan2 import Generator, get_config, save_checkpoint

torch.set_num_threads(1)


def tiny_generator(seed: int = 0) -> Generator:
    # 64 px so that F (64 px input) sees the images unresized; the tiny preset's channels keep it fast.
    return Generator(get_config("tiny", img_resolution=64), seed=seed).eval()


def tiny_estimator(seed: int = 0) -> ReconstructionNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ReconstructionNet(tiny_config())
        # F's last layer starts at zero (constant estimates); random weights make estimates depend on the image.
        torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def G() -> Generator:
    return tiny_generator()


@pytest.fixture(scope="module")
def F() -> ReconstructionNet:
    return tiny_estimator()


MEASURED = ("seconds_per_1000", "face_found_fraction")  # manifest fields that vary from run to run


def settings(root):
    """A corpus's manifest without the figures measured while making it."""
    manifest = json.loads((root / "manifest.json").read_text())
    return {key: value for key, value in manifest.items() if key not in MEASURED}


def shard_arrays(root, index):
    with np.load(shard_path(root, index)) as data:
        return {key: data[key].copy() for key in data.files}


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_identical_shards(tmp_path, G, F):
    full = make_corpus(tmp_path / "full", 10, generator=G, estimator=F, shard_size=4, progress=False)

    def stop_after_first(index, path):
        if index == 0:
            raise Interrupt

    partial = tmp_path / "partial"
    with pytest.raises(Interrupt):
        make_corpus(partial, 10, generator=G, estimator=F, shard_size=4, progress=False, on_shard=stop_after_first)
    assert shard_path(partial, 0).exists() and not shard_path(partial, 1).exists()
    manifest_before = settings(partial)

    written = []
    make_corpus(partial, 10, generator=G, estimator=F, shard_size=4, progress=False,
                on_shard=lambda index, path: written.append(index))
    assert written == [1, 2]  # the complete shard was skipped
    assert settings(partial) == manifest_before
    assert manifest_before == settings(full)
    for i in range(3):
        a, b = shard_arrays(full, i), shard_arrays(partial, i)
        assert sorted(a) == sorted(b)
        for key in a:  # NaN (no face detected) equals NaN
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"shard {i} {key}")
    data = CorpusDataset(partial)
    assert len(data) == 10
    assert data.index.tolist() == list(range(10))  # no duplicates, no gaps
    assert not list(partial.glob(".shard_*"))  # no temporary files left


def test_count_growth_extends_with_the_same_items(tmp_path, G, F):
    reference = CorpusDataset(make_corpus(tmp_path / "ref", 10, generator=G, estimator=F, shard_size=4, progress=False))
    root = tmp_path / "grow"
    make_corpus(root, 6, generator=G, estimator=F, shard_size=4, progress=False)
    assert len(CorpusDataset(root)) == 6
    make_corpus(root, 10, generator=G, estimator=F, shard_size=4, progress=False)
    grown = CorpusDataset(root)
    assert grown.manifest["count"] == 10
    torch.testing.assert_close(grown.w, reference.w, rtol=0, atol=0)
    assert torch.equal(grown.images, reference.images)
    with pytest.raises(CorpusError, match="grow but not shrink"):
        make_corpus(root, 5, generator=G, estimator=F, shard_size=4, progress=False)


def test_items_match_resynthesis_and_estimates(tmp_path, G, F):
    data = CorpusDataset(make_corpus(tmp_path / "c", 6, generator=G, estimator=F, shard_size=4, progress=False))
    assert data.manifest["generator_sha256"] == module_sha256(G)
    assert data.manifest["num_ws"] == G.num_ws and data.manifest["w_dim"] == G.w_dim
    item = data[5]
    assert item["w"].shape == (G.num_ws, G.w_dim) and item["w"].dtype == torch.float32
    assert item["image"].shape == (3, 64, 64) and item["params"].shape == (196,) and item["landmarks"].shape == (68, 2)
    assert item["index"] == 5
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    # w is the mapping output of the item's own seeded z.
    with torch.no_grad():
        ws = G.mapping(data.z[5:6], None, truncation_psi=1.0)
    torch.testing.assert_close(ws[0], item["w"])
    # The stored image is G(w) up to 8-bit quantisation (half a level of 2/255).
    image = synthesize(G, item["w"][None])[0]
    assert float((image - item["image"]).abs().max()) <= 1 / 127.5 + 1e-5
    # The stored parameters are F's estimate of the (unquantised) image.
    params, landmarks = estimate_images(F, image[None])
    torch.testing.assert_close(params[0], item["params"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(landmarks[0], item["landmarks"], atol=1e-4, rtol=1e-5)
    # Same items as the in-memory sampler.
    items = sample_pairs(G, F, 2, seed=0, start=4)
    torch.testing.assert_close(items["w"], data.w[4:6])
    torch.testing.assert_close(items["params"], data.params[4:6], atol=1e-5, rtol=1e-5)
    assert items["index"].tolist() == [4, 5]
    # The latents alone (no images), as the latent F's linear baseline is fitted on: the same w.
    torch.testing.assert_close(sample_latents(G, 2, seed=0, start=4), items["w"], atol=1e-6, rtol=1e-6)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    batch = next(iter(loader))
    assert batch["w"].shape == (4, G.num_ws, G.w_dim) and batch["image"].shape == (4, 3, 64, 64)


def test_foreign_folder_is_refused_with_a_fix(tmp_path, G, F):
    root = make_corpus(tmp_path / "c", 4, generator=G, estimator=F, shard_size=4, progress=False)
    with pytest.raises(CorpusError, match=r"seed.*new --out.*--overwrite"):
        make_corpus(root, 4, generator=G, estimator=F, shard_size=4, seed=1, progress=False)
    with pytest.raises(CorpusError, match="another generator"):
        make_corpus(root, 4, generator=tiny_generator(seed=1), estimator=F, shard_size=4, progress=False)
    with pytest.raises(CorpusError, match="another estimator"):
        make_corpus(root, 4, generator=G, estimator=tiny_estimator(seed=1), shard_size=4, progress=False)
    make_corpus(root, 4, generator=G, estimator=F, shard_size=4, seed=1, overwrite=True, progress=False)
    assert CorpusDataset(root).manifest["seed"] == 1


def test_corrupt_shard_is_reported_and_remade(tmp_path, G, F):
    root = make_corpus(tmp_path / "c", 8, generator=G, estimator=F, shard_size=4, progress=False)
    good = shard_arrays(root, 1)
    shard_path(root, 1).write_bytes(b"not a zip file")
    with pytest.raises(CorpusError, match=r"corrupt corpus shard .*shard_00001.npz.*delete"):
        CorpusDataset(root)
    make_corpus(root, 8, generator=G, estimator=F, shard_size=4, progress=False)  # re-made identically
    remade = shard_arrays(root, 1)
    for key in good:
        np.testing.assert_array_equal(good[key], remade[key])
    shard_path(root, 0).unlink()
    with pytest.raises(CorpusError, match="1 of 2 shards"):
        CorpusDataset(root)


def test_missing_networks_and_bad_options(tmp_path, G, F, monkeypatch):
    from stylerig_lite import pretrained

    with pytest.raises(FileNotFoundError, match="generator checkpoint not found"):
        make_corpus(tmp_path / "c", 4, generator=tmp_path / "nope.pt", estimator=F, progress=False)

    def missing(name):
        raise pretrained.WeightsError(f"the embedded {name} is missing")

    monkeypatch.setattr(pretrained, "embedded_path", missing)
    with pytest.raises(FileNotFoundError, match="--generator PATH"):
        make_corpus(tmp_path / "c", 4, estimator=F, progress=False)
    with pytest.raises(FileNotFoundError, match="--estimator PATH"):
        make_corpus(tmp_path / "c", 4, generator=G, progress=False)
    with pytest.raises(ValueError, match="count"):
        make_corpus(tmp_path / "c", 0, generator=G, estimator=F, progress=False)
    with pytest.raises(ValueError, match="truncation"):
        make_corpus(tmp_path / "c", 4, generator=G, estimator=F, truncation=1.5, progress=False)
    with pytest.raises(FileNotFoundError, match="make-corpus"):
        CorpusDataset(tmp_path / "empty")


def test_quick_mode_default_count(tmp_path, G, F, monkeypatch):
    monkeypatch.setenv("STYLERIG_LITE_QUICK", "1")
    monkeypatch.setattr(corpus_mod, "QUICK_COUNT", 3)
    data = CorpusDataset(make_corpus(tmp_path / "q", generator=G, estimator=F, progress=False))
    assert len(data) == 3 and data.manifest["shard_size"] == corpus_mod.QUICK_SHARD_SIZE


def test_cli_make_corpus(tmp_path, G, F, capsys):
    from stylerig_lite.cli import main
    from stylerig_lite.pretrained import sha256_of

    g_path, f_path = tmp_path / "g.pt", tmp_path / "f.pt"
    save_checkpoint(g_path, G, G_ema=G)
    F.save(f_path)
    out = tmp_path / "corpus"
    args = ["make-corpus", "--out", str(out), "--count", "5", "--shard-size", "4", "--generator", str(g_path),
            "--estimator", str(f_path), "--quiet"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 5 and manifest["generator_file_sha256"] == sha256_of(g_path)
    assert manifest["estimator_file_sha256"] == sha256_of(f_path)
    assert manifest["generator_sha256"] == module_sha256(G)  # the loaded network hashes like the in-memory one
    assert main(args) == 0  # rerun: nothing to do
    assert main(args[:-1] + ["--seed", "3", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not math.isnan(CorpusDataset(out).params.sum())


# ----------------------------------------------------------------------------------------- bad inputs

_HOLD_LOCK = """
import sys
from stylerig_lite.io_utils import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_two_writers_on_one_folder(tmp_path, G, F, capsys):
    """While one make-corpus writes a folder, a second one (with --overwrite too) fails at once, naming it."""
    import subprocess
    import sys

    from stylerig_lite.cli import main
    from stylerig_lite.io_utils import FolderLockedError

    root = make_corpus(tmp_path / "corpus", 4, generator=G, estimator=F, shard_size=4, progress=False)
    assert not (root / ".lock").exists()  # released when the corpus is complete
    before = shard_arrays(root, 0)

    def during_the_write(index, path):  # a second writer while the first holds the folder
        with pytest.raises(FolderLockedError, match=rf"{root} is being written by another process \(pid {os.getpid()}"):
            make_corpus(root, 8, generator=G, estimator=F, shard_size=4, progress=False)
        with pytest.raises(FolderLockedError, match="refusing to --overwrite"):
            make_corpus(root, 8, generator=G, estimator=F, shard_size=4, overwrite=True, progress=False)

    make_corpus(root, 8, generator=G, estimator=F, shard_size=4, progress=False, on_shard=during_the_write)
    assert len(CorpusDataset(root)) == 8 and np.array_equal(shard_arrays(root, 0)["w"], before["w"])

    # Another process holds the folder: the command fails with exit status 2 and names that process.
    g_path, f_path = tmp_path / "g.pt", tmp_path / "f.pt"
    save_checkpoint(g_path, G, G_ema=G)
    F.save(f_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["make-corpus", "--out", str(root), "--count", "8", "--shard-size", "4", "--generator", str(g_path),
                "--estimator", str(f_path), "--quiet"]
        for extra in ([], ["--overwrite"]):
            assert main(args + extra) == 2
            err = capsys.readouterr().err
            assert f"{root} is being written by another process (pid {holder.pid}" in err, err
        assert len(CorpusDataset(root)) == 8  # --overwrite did not delete anything
    finally:
        holder.communicate("\n", timeout=60)


def test_counts_below_one_are_usage_errors(tmp_path, capsys):
    from stylerig_lite.cli import main

    for count in ("0", "-3"):
        with pytest.raises(SystemExit) as exit_:
            main(["make-corpus", "--out", str(tmp_path / "c"), "--count", count])
        assert exit_.value.code == 2
        assert f"argument --count: must be an integer >= 1, got '{count}'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_images_in_the_wrong_range_are_refused(G, F):
    images = synthesize(G, G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)), None))
    estimate_images(F, images * 1.5)  # GAN overshoot is clamped, not refused
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*0\.\.255 values: use images / 127.5 - 1"):
        estimate_images(F, (images + 1) * 127.5)
    with pytest.raises(ValueError, match=r"0\.\.255 values"):
        corpus_mod.to_uint8((images + 1) * 127.5)
    stored = corpus_mod.to_uint8(images)
    assert torch.allclose(corpus_mod.from_uint8(stored), images, atol=1 / 127.5)
    with pytest.raises(TypeError, match="uint8"):
        corpus_mod.from_uint8(torch.from_numpy(stored).float() / 255)
    with pytest.raises(ValueError, match="channels last"):
        corpus_mod.from_uint8(torch.from_numpy(stored).permute(0, 3, 1, 2).contiguous())


def test_train_rignet_refuses_a_corpus_of_another_generator(tmp_path, G, F):
    from stylerig_lite import train_rignet
    from stylerig_lite.rignet import GeneratorMismatchError

    root = make_corpus(tmp_path / "corpus", 4, generator=G, estimator=F, progress=False)
    config = train_rignet.make_config("tiny", corpus=str(root))
    train_rignet.PairSource(G, F, config)  # its own generator: fine
    with pytest.raises(GeneratorMismatchError, match=rf"the corpus {root} was made with the generator with sha256 "
                                                     rf"{module_sha256(G)[:12]}"):
        train_rignet.PairSource(tiny_generator(seed=1), F, config)


# ----------------------------------------------------------------------------------------- detected landmarks


class FakeDetector:
    """Finds a 'face' in the images whose stored pixels sum to an even number: deterministic, no dlib."""

    name = "fake (pixel-sum parity)"

    def __init__(self):
        self.calls = 0

    @staticmethod
    def found_in(uint8_images) -> torch.Tensor:
        return torch.as_tensor(np.asarray(uint8_images).reshape(len(uint8_images), -1).sum(1) % 2 == 0)

    def detect(self, images, value_range=(-1.0, 1.0)):
        from stylerig_lite.landmarks import Detections

        assert value_range == (-1.0, 1.0) and images.shape[1:] == (3, 64, 64)
        self.calls += 1
        stored = corpus_mod.to_uint8(images)  # the detector reads the stored pixels: this is exact
        found = self.found_in(stored)
        n = len(images)
        points = torch.arange(68 * 2, dtype=torch.float32).reshape(1, 68, 2).repeat(n, 1, 1) / 4
        points[~found] = 123.0  # garbage where not found: the corpus must record NaN instead
        confidence = torch.linspace(-1, 1, n)
        return Detections(points, confidence, found)


def test_shards_hold_detected_landmarks(tmp_path, G, F):
    root = make_corpus(tmp_path / "c", 6, generator=G, estimator=F, shard_size=4, progress=False)
    arrays = shard_arrays(root, 1)
    assert sorted(arrays) == sorted(corpus_mod.SHARD_KEYS)
    assert arrays["detected_landmarks"].shape == (2, 68, 2) and arrays["detected_landmarks"].dtype == np.float32
    assert arrays["landmark_confidence"].shape == (2,) and arrays["landmark_confidence"].dtype == np.float32
    assert arrays["face_found"].shape == (2,) and arrays["face_found"].dtype == np.bool_
    assert arrays["landmarks"].shape == (2, 68, 2)  # F's estimate is still there
    data = CorpusDataset(root)
    assert data.detected_landmarks.shape == (6, 68, 2) and data.detected_landmarks.dtype == torch.float32
    assert data.landmark_confidence.shape == (6,) and data.face_found.dtype == torch.bool
    # Where no face is found the points and the confidence are NaN; where one is, the points are finite.
    assert torch.isnan(data.detected_landmarks[~data.face_found]).all()
    assert torch.isnan(data.landmark_confidence[~data.face_found]).all()
    assert torch.isfinite(data.detected_landmarks[data.face_found]).all()
    item = data[3]
    assert item["detected_landmarks"].shape == (68, 2) and item["face_found"].dtype == torch.bool
    assert item["landmark_confidence"].shape == ()
    # The manifest names the detector and the figures measured while making the corpus.
    manifest = data.manifest
    assert manifest["version"] == 2
    assert manifest["landmarks_detector"] == "dlib 68-point (face_recognition_models 0.3.0)"
    assert manifest["seconds_per_1000"] > 0
    assert manifest["face_found_fraction"] == pytest.approx(float(data.face_found.float().mean()))


def test_images_without_a_face_are_recorded_not_dropped(tmp_path, G, F):
    detector = FakeDetector()
    root = make_corpus(tmp_path / "c", 10, generator=G, estimator=F, shard_size=4, progress=False, detector=detector)
    assert detector.calls == 3  # once per shard
    data = CorpusDataset(root)
    assert len(data) == 10 and data.index.tolist() == list(range(10))  # count unchanged, no gaps
    expected = FakeDetector.found_in(data.images)
    assert 0 < int(expected.sum()) < 10  # both cases occur
    assert torch.equal(data.face_found, expected)
    missing = ~data.face_found
    assert torch.isnan(data.detected_landmarks[missing]).all() and torch.isnan(data.landmark_confidence[missing]).all()
    torch.testing.assert_close(data.detected_landmarks[~missing],
                               (torch.arange(136, dtype=torch.float32).reshape(68, 2) / 4).expand(int((~missing).sum()), 68, 2))
    assert torch.equal(data.landmark_confidence[~missing], torch.cat([torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 4),
                                                                          torch.linspace(-1, 1, 2)])[~missing])
    manifest = data.manifest
    assert manifest["landmarks_detector"] == FakeDetector.name
    assert manifest["face_found_fraction"] == pytest.approx(float(expected.float().mean()))
    assert manifest["seconds_per_1000"] > 0
    # Resuming needs the same detector: a corpus of another detector is not mixed with this one.
    with pytest.raises(CorpusError, match="another landmark detector"):
        make_corpus(root, 12, generator=G, estimator=F, shard_size=4, progress=False)
    with pytest.raises(TypeError, match="detect"):
        make_corpus(tmp_path / "d", 4, generator=G, estimator=F, progress=False, detector=object())


def test_version_1_corpus_is_refused_with_a_fix(tmp_path, G, F):
    root = make_corpus(tmp_path / "c", 4, generator=G, estimator=F, shard_size=4, progress=False,
                       detector=FakeDetector())
    manifest = json.loads((root / "manifest.json").read_text())
    for key in ("landmarks_detector", "seconds_per_1000", "face_found_fraction"):
        manifest.pop(key)
    manifest["version"] = 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    fix = r"format version 1.*re-make it with `stylerig-lite make-corpus --out .* --overwrite`"
    with pytest.raises(CorpusError, match=fix):
        CorpusDataset(root)
    with pytest.raises(CorpusError, match=fix):
        make_corpus(root, 4, generator=G, estimator=F, shard_size=4, progress=False, detector=FakeDetector())
    make_corpus(root, 4, generator=G, estimator=F, shard_size=4, progress=False, detector=FakeDetector(), overwrite=True)
    assert CorpusDataset(root).manifest["version"] == 2
