"""The latent F (W+ -> 3DMM parameters), its self-supervised training and its metrics.

Known answers: an untrained F returns its output mean; a fitted framing recovers a known
translation; the metrics of an F that reads the exact parameters are zero. Round trips: a
checkpoint (fp16 too) reloads to the same outputs; a resumed run equals an uninterrupted one.
Bad input: W (not W+) latents, NaN, another generator's latents or corpus.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from stylerig_lite import corpus as corpus_mod
from stylerig_lite import morphable, stylegan2
from stylerig_lite.corpus import CorpusDataset, make_corpus
from stylerig_lite.evaluate_f import interocular, latent_f_metrics
from stylerig_lite.face_render import default_camera, render_face
from stylerig_lite.io_utils import CheckpointError, GeneratorMismatchError, module_sha256
from stylerig_lite.latent_f import LatentF, LatentFConfig, get_config, output_statistics
from stylerig_lite.losses import LOSS_PARTS, crop_face_model
from stylerig_lite.params import SLICES
from stylerig_lite import train_latent_f

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

TRANSLATION = slice(SLICES["pose"].start + 3, SLICES["pose"].stop)


@pytest.fixture(scope="module")
def face_model(ict_mirror) -> morphable.FaceModel:
    del ict_mirror
    return morphable.load_face_model(progress=False)


def tiny_F(**kwargs) -> LatentF:
    torch.manual_seed(0)
    F = LatentF(get_config("tiny"), **kwargs)
    torch.nn.init.normal_(F.mlp[-1].weight, std=0.05)  # a non-constant map for the round trips
    return F


def test_untrained_latent_f_returns_its_output_mean():
    F = LatentF(get_config("tiny"))
    w = torch.randn(3, 4, 8)
    mean, _ = output_statistics()
    torch.testing.assert_close(F(w), mean[None].expand(3, -1))
    assert F.estimate(w).batch_size == 3


def test_input_standardisation_uses_the_corpus_statistics():
    F = tiny_F()
    ws = torch.randn(50, 4, 8) * 3 + 2
    F.set_input_statistics(ws)
    torch.testing.assert_close(F.w_mean, ws.mean(0))
    torch.testing.assert_close(F.w_std, ws.std(0))
    # standardising is an affine map: shifting the corpus and its statistics together changes nothing
    G = tiny_F()
    G.set_input_statistics(ws + 5)
    torch.testing.assert_close(F(ws[:4]), G(ws[:4] + 5), atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip_full_and_half(tmp_path):
    F = tiny_F().set_input_statistics(torch.randn(10, 4, 8)).record_generator("a" * 64, file_sha256="b" * 64)
    w = torch.randn(5, 4, 8)
    F.save(tmp_path / "f.pt")
    G = LatentF.load(tmp_path / "f.pt")
    torch.testing.assert_close(G(w), F(w))
    assert G.generator_sha256 == "a" * 64 and G.generator_file_sha256 == "b" * 64
    F.save(tmp_path / "h.pt", half=True)
    H = LatentF.load(tmp_path / "h.pt")
    assert H.mlp[0].weight.dtype == torch.float32  # loaded back as float32
    torch.testing.assert_close(H(w), F(w), atol=5e-3, rtol=1e-3)
    assert (tmp_path / "h.pt").stat().st_size < (tmp_path / "f.pt").stat().st_size


def test_bad_input_gives_clear_errors(tmp_path):
    F = tiny_F()
    with pytest.raises(ValueError, match="W\\+ latents"):
        F(torch.randn(2, 8))  # one w per sample, not W+
    with pytest.raises(ValueError, match="4 ws x 8"):
        F(torch.randn(2, 5, 8))
    w = torch.randn(2, 4, 8)
    w[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN|finite"):
        F(w)
    with pytest.raises(TypeError):
        F(np.zeros((2, 4, 8)))
    with pytest.raises(ValueError, match="positive integer"):
        LatentFConfig(hidden=0)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        LatentF.load(tmp_path / "bad.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a latent-F checkpoint"):
        LatentF.load(tmp_path / "other.pt")


def test_another_generator_is_refused():
    G = stylegan2.Generator("tiny", seed=0).eval()
    other = stylegan2.Generator("tiny", seed=1).eval()
    F = LatentF(LatentFConfig.for_generator(G, hidden=8)).record_generator(module_sha256(G))
    F.check_generator(G)  # its own: fine
    with pytest.raises(GeneratorMismatchError, match="train-latent-f"):
        F.check_generator(other)


def test_fit_framing_recovers_a_known_translation(face_model):
    size = 64
    mean, _ = output_statistics()
    params = mean.clone()[None]
    params[0, SLICES["pose"].start : SLICES["pose"].start + 3] = 0.0
    true = torch.tensor([1.2, -2.0, 15.0])
    params[0, TRANSLATION] = true
    cropped = crop_face_model(face_model, LOSS_PARTS)
    points = render_face(cropped, morphable.FaceParams.from_vector(params), default_camera(size),
                         parts=LOSS_PARTS).landmarks
    fit = train_latent_f.fit_framing(face_model, points.repeat(3, 1, 1), size, steps=400)
    assert fit["rms_px"] < 0.05
    torch.testing.assert_close(torch.tensor(fit["translation_cm"]), true, atol=0.1, rtol=0)


class ExactF(torch.nn.Module):
    """Reads the exact parameters stored for each latent (a stand-in for a perfect latent F)."""

    def __init__(self, params):
        super().__init__()
        self.params = params

    def forward(self, w):
        return self.params[w[:, 0, 0].long()]


def test_metrics_of_an_exact_f_are_zero_and_shifts_are_measured(face_model):
    size = 64
    params = morphable.sample_params(6, seed=3).to_vector()
    cropped = crop_face_model(face_model, LOSS_PARTS)
    render = render_face(cropped, morphable.FaceParams.from_vector(params), default_camera(size), parts=LOSS_PARTS)
    images = render.image.clamp(0, 1)
    ws = torch.arange(6.0)[:, None, None].expand(6, 2, 3).clone()
    found = torch.tensor([True, True, True, True, True, False])
    detected = render.landmarks.clone()
    detected[~found] = float("nan")
    metrics = latent_f_metrics(ExactF(params), ws, images, detected, found, model=face_model)
    assert metrics["faces_found"] == 5 and metrics["pairs"] == 6
    assert metrics["landmark_nme_median"] < 1e-5
    assert metrics["photometric_mae_255"] < 0.5  # the render itself, up to the clamp
    # every detected landmark 2 px to the right: NME = 2 / inter-ocular distance
    shifted = detected + torch.tensor([2.0, 0.0])
    metrics = latent_f_metrics(ExactF(params), ws, images, shifted, found, model=face_model)
    expected = float((2.0 / interocular(shifted[:5])).median())
    assert metrics["landmark_nme_median"] == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------------------- training


class FixedDetector:
    """Puts the same landmarks on every image (a deterministic stand-in for dlib)."""

    name = "fixed landmarks"

    def __init__(self, points):
        self.points = points

    def detect(self, images, value_range=(-1.0, 1.0)):
        from stylerig_lite.landmarks import Detections

        n = len(images)
        return Detections(points=self.points[None].expand(n, -1, -1).clone(), confidence=torch.ones(n),
                          found=torch.ones(n, dtype=torch.bool))


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, face_model):
    G = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=0).eval()
    mean, _ = output_statistics()
    cropped = crop_face_model(face_model, LOSS_PARTS)
    points = render_face(cropped, morphable.FaceParams.from_vector(mean[None]), default_camera(64),
                         parts=LOSS_PARTS).landmarks[0]
    root = tmp_path_factory.mktemp("latent_f") / "corpus"
    make_corpus(root, 12, generator=G, estimator=corpus_mod.NO_ESTIMATOR, shard_size=6, progress=False,
                detector=FixedDetector(points))
    return G, root


def test_training_resumes_to_the_same_network(tmp_path, tiny_corpus, face_model):
    G, root = tiny_corpus
    config = train_latent_f.get_config("tiny", steps=4, validation_items=4)
    full = train_latent_f.train(root, tmp_path / "full.pt", config, model=face_model, G=G, progress=False)
    stopped = train_latent_f.train(root, tmp_path / "part.pt", config, model=face_model, G=G, progress=False,
                                   minutes=0)  # interrupted after its first step
    assert stopped["step"] == 1
    resumed = train_latent_f.train(root, tmp_path / "part.pt", config, model=face_model, G=G, progress=False)
    assert resumed["step"] == full["step"] == 4
    for key, value in full["latent_f"]["state_dict"].items():
        torch.testing.assert_close(resumed["latent_f"]["state_dict"][key], value)
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert "validation" in full["history"][-1]
    assert full["split"] == {"train": 8, "validation": 4, "skipped_no_face": 0}
    F = LatentF.load(tmp_path / "full.pt")  # a training checkpoint loads as the network
    F.check_generator(G)
    # the loss went through the renderer: weights moved from their zero start
    assert float(F.mlp[-1].weight.abs().sum()) > 0


def test_training_refuses_a_foreign_corpus_or_missing_estimates(tmp_path, tiny_corpus, face_model):
    G, root = tiny_corpus
    other = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=1).eval()
    config = train_latent_f.get_config("tiny")
    with pytest.raises(GeneratorMismatchError, match="another generator"):
        train_latent_f.train(root, tmp_path / "x.pt", config, model=face_model, G=other, progress=False)
    warm = train_latent_f.get_config("tiny", warm_start_steps=2)
    with pytest.raises(ValueError, match="image F's estimates"):
        train_latent_f.train(root, tmp_path / "y.pt", warm, model=face_model, G=G, progress=False)
    train_latent_f.train(root, tmp_path / "z.pt", config, model=face_model, G=G, progress=False)
    changed = train_latent_f.get_config("tiny", lr=0.5)
    with pytest.raises(ValueError, match="other settings"):
        train_latent_f.train(root, tmp_path / "z.pt", changed, model=face_model, G=G, progress=False)


def test_corpus_without_estimator_and_at_a_lower_resolution(tmp_path, tiny_corpus):
    G, _ = tiny_corpus
    detector = FixedDetector(torch.full((68, 2), 10.0))
    root = make_corpus(tmp_path / "c", 4, generator=G, estimator=corpus_mod.NO_ESTIMATOR, shard_size=4,
                       progress=False, detector=detector, image_size=32)
    data = CorpusDataset(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["image_size"] == 32 and manifest["estimator_sha256"] is None
    assert data.images.shape == (4, 32, 32, 3) and bool(data.params.isnan().all())
    full = G.synthesis(data.w[:1], noise_mode="const")
    torch.testing.assert_close(corpus_mod.synthesize(G, data.w[:1], image_size=32),
                               torch.nn.functional.avg_pool2d(full, 2).clamp(-1, 1))
    with pytest.raises(ValueError, match="image_size 48"):
        make_corpus(tmp_path / "d", 4, generator=G, estimator=corpus_mod.NO_ESTIMATOR, progress=False,
                    detector=detector, image_size=48)


# ------------------------------------------------------------------ RigNet through the latent F


def random_latent_f(G, seed: int = 0) -> LatentF:
    torch.manual_seed(seed)
    F = LatentF(LatentFConfig.for_generator(G, hidden=16))
    torch.nn.init.normal_(F.mlp[-1].weight, std=0.05)  # a map that depends on w, so gradients flow
    return F.record_generator(module_sha256(G)).eval().requires_grad_(False)


def test_rig_losses_through_the_latent_f_need_no_generator(face_model):
    from stylerig_lite.losses import RenderLoss
    from stylerig_lite.rignet import LossWeights, RigNet, RigNetConfig, RigSample, rig_losses

    G = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=0).eval()
    F = random_latent_f(G)
    w = G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), None).detach()
    images = torch.rand(4, 3, 64, 64)
    landmarks = torch.rand(4, 68, 2) * 64
    sample = RigSample(w, images, F(w), landmarks)
    halves = [RigSample(*(t[k : k + 2] for t in (sample.w, sample.image, sample.params, sample.landmarks)))
              for k in (0, 2)]
    net = RigNet(RigNetConfig.for_generator(G, "pose"))
    for decoder in net.decoders:  # a trained-looking RigNet (the zero start passes no gradient to encoders)
        torch.nn.init.normal_(decoder.weight, std=0.01)
    render = RenderLoss(face_model, default_camera(64))
    loss, parts = rig_losses(net, None, F, render, *halves, LossWeights())  # no generator at all
    assert {"rec", "edit", "consist", "target_error"} <= set(parts) and parts["edit"].shape == (4,)
    loss.backward()
    assert sum(float(d.weight.grad.abs().sum()) for d in net.decoders) > 0
    assert all(q.grad is None for q in F.parameters())


def test_train_rignet_with_the_latent_f_from_a_corpus(tmp_path, tiny_corpus, face_model):
    from stylerig_lite import train_rignet
    from stylerig_lite.rignet import RigNet

    G, root = tiny_corpus
    F = random_latent_f(G)
    config = train_rignet.make_config("tiny", out=str(tmp_path / "rig.pt"), corpus=str(root), steps=3, batch=2,
                                      log_every=1, checkpoint_seconds=1e9)
    assert config.f == "latent"  # the paper's way is the default
    state = train_rignet.train(config, G=G, F=F, face_model=face_model, progress=False, log=lambda m: None)
    assert state.step == 3 and len(state.history) == 3
    assert {"edit", "consist", "rec"} <= set(state.history[-1])
    RigNet.load(tmp_path / "rig.pt").check_generator(G)
    # a latent F of another generator is refused before any step
    other = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=1).eval()
    with pytest.raises(GeneratorMismatchError, match="latent F"):
        train_rignet.train(train_rignet.make_config("tiny", out=str(tmp_path / "r2.pt"), corpus=str(root)), G=G,
                           F=random_latent_f(other), face_model=face_model, progress=False)
    # without a corpus there are no images to compare with: a clear error
    with pytest.raises(ValueError, match="--corpus"):
        train_rignet.train(train_rignet.make_config("tiny", out=str(tmp_path / "r3.pt")), G=G, F=F,
                           face_model=face_model, progress=False)
    # an image F with f="latent" (or the reverse) is a mismatch, not a silent switch
    with pytest.raises(ValueError, match="make them agree"):
        train_rignet.train(train_rignet.make_config("tiny", out=str(tmp_path / "r4.pt"), corpus=str(root),
                                                    f="image"), G=G, F=F, face_model=face_model, progress=False)


def test_evaluation_with_a_latent_f_and_no_second_estimator(face_model):
    """The photoreal generator's path: targets from the latent F, no E, images at another size than G's."""
    from stylerig_lite import evaluate
    from stylerig_lite.rignet import RigNet, RigNetConfig

    G = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=0).eval()
    F = random_latent_f(G)
    mask = evaluate.RenderedFaceMask(32, model=face_model)
    evalset = evaluate.EvalSet.build(G, F, None, count=4, seed=5, batch=2, judge=None, identity=None,
                                     image_size=32, face_mask=mask)
    assert evalset.images_w.shape == (4, 3, 32, 32)
    torch.testing.assert_close(evalset.p_w, F(evalset.w))  # targets come from the latent F
    net = RigNet(RigNetConfig.for_generator(G, "pose"))
    result = evaluate.evaluate_method(net.rig, evalset, "pose")
    assert "target_error" not in result  # no second estimator: no E readings are reported
    assert result["preservation"]["outside_face_mae_255"] == pytest.approx(0.0, abs=1e-6)  # untrained: no edit
    context = evaluate.MethodContext(evalset, fit_count=6)
    ws, params = context.training_pairs()
    torch.testing.assert_close(params, F(ws))
    other = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=1).eval()
    with pytest.raises(GeneratorMismatchError):
        evaluate.EvalSet.build(other, F, None, count=2, judge=None, identity=None, face_mask=None)


class ZOnlyGenerator(torch.nn.Module):
    """A generator with no mapping network: its only latent is z, one W+ row (``w = z``)."""

    z_dim = w_dim = 8
    num_ws = 1
    img_resolution = 64
    c_dim = 0

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.to_image = torch.nn.Linear(8, 3 * 16 * 16)

    def mapping(self, z, c=None, truncation_psi=1.0):
        return z[:, None, :]  # [B, 1, z_dim]

    def synthesis(self, ws, noise_mode="const"):
        small = torch.tanh(self.to_image(ws[:, 0])).view(-1, 3, 16, 16)
        return torch.nn.functional.interpolate(small, size=(64, 64), mode="nearest")


def test_a_generator_whose_only_latent_is_z_can_be_rigged(tmp_path, face_model):
    from stylerig_lite import train_rignet
    from stylerig_lite.rignet import RigNet

    G = ZOnlyGenerator().eval()
    detector = FixedDetector(torch.full((68, 2), 32.0) + torch.randn(68, 2, generator=torch.Generator().manual_seed(0)))
    root = make_corpus(tmp_path / "z", 10, generator=G, estimator=corpus_mod.NO_ESTIMATOR, shard_size=5,
                       progress=False, detector=detector)
    F_config = train_latent_f.get_config("tiny", steps=2, validation_items=2)
    train_latent_f.train(root, tmp_path / "f.pt", F_config, model=face_model, G=G, progress=False)
    F = LatentF.load(tmp_path / "f.pt")
    assert (F.config.num_ws, F.config.w_dim) == (1, 8)
    config = train_rignet.make_config("tiny", out=str(tmp_path / "rig.pt"), corpus=str(root), steps=2, batch=2,
                                      checkpoint_seconds=1e9)
    state = train_rignet.train(config, G=G, F=F, face_model=face_model, progress=False, log=lambda m: None)
    assert state.step == 2
    rig = RigNet.load(tmp_path / "rig.pt")
    rig.check_generator(G)
    w = G.mapping(torch.randn(3, 8))
    assert rig.rig(w, morphable.sample_params(3, seed=1).to_vector()).shape == (3, 1, 8)


def test_editor_with_a_latent_f_and_smaller_frames(face_model):
    from stylerig_lite.editing import EditorState
    from stylerig_lite.rignet import RigNet, RigNetConfig

    G = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=0).eval()
    F = random_latent_f(G)
    rig = RigNet(RigNetConfig.for_generator(G, "pose")).record_generator(module_sha256(G))
    state = EditorState(G, {"pose": rig}, F, face_model, image_size=32, estimate_shown=True)
    torch.testing.assert_close(state.source.to_vector(), F(state.w))  # the sliders start from F(w)
    assert state.source_image.shape == (1, 3, 32, 32)
    state.set_slider("yaw", 15.0)
    frame = state.compute_frame()
    assert frame.image.shape == (3, 32, 32) and frame.estimate is not None
    other = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=1).eval()
    with pytest.raises(GeneratorMismatchError):
        EditorState(other, {}, F, face_model)


def test_style_mixed_corpus_items_are_reproducible_and_mixed(tmp_path):
    G = stylegan2.Generator(stylegan2.get_config("tiny", img_resolution=64), seed=0).eval()
    plan = corpus_mod.mixing_plan(0, 0, 200, G.num_ws, 0.5)
    mixed = plan < G.num_ws
    assert 0.35 < float(mixed.float().mean()) < 0.65 and int(plan.min()) >= 1
    torch.testing.assert_close(corpus_mod.mixing_plan(0, 50, 20, G.num_ws, 0.5), plan[50:70])  # per item
    items = corpus_mod.sample_pairs(G, None, 8, seed=0, mixing=1.0, batch=3)
    plain = corpus_mod.sample_pairs(G, None, 8, seed=0, batch=5)
    cross = corpus_mod.mixing_plan(0, 0, 8, G.num_ws, 1.0)
    for k in range(8):
        c = int(cross[k])
        torch.testing.assert_close(items["w"][k, :c], plain["w"][k, :c])  # rows before the crossover: w's own
        assert not torch.allclose(items["w"][k, c:], plain["w"][k, c:])  # after it: another latent's
    with pytest.raises(ValueError, match="mixing probability"):
        corpus_mod.mixing_plan(0, 0, 2, G.num_ws, 1.5)


def test_evaluate_f_command_prints_the_metrics(capsys):
    from stylerig_lite import cli

    assert cli.main(["evaluate-f", "--generator", "faceworld", "--count", "6", "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 6 and result["source"].startswith("held-out pairs")
    for key in ("landmark_nme_median", "photometric_mae_255", "yaw_agreement_deg_median"):
        assert math.isfinite(result[key]), key
    assert cli.main(["evaluate-f", "--generator", "faceworld", "--latent-f", "missing.pt"]) == 2
