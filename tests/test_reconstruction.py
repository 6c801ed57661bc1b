"""F, its augmentation and the training loop (tiny sizes, CPU); the dataset cache: test_datasets.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from stylerig_lite import reconstruction as rec
from stylerig_lite import evaluate, train_f
from stylerig_lite.camera import Camera
from stylerig_lite.morphable import NUM_PARAMS, SLICES, FaceParams


def tiny_net(seed: int = 0) -> rec.ReconstructionNet:
    torch.manual_seed(seed)
    return rec.ReconstructionNet(rec.tiny_config())


def random_images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def world():
    from stylerig_lite.world import FaceWorld

    return FaceWorld()


# -- the network ----------------------------------------------------------------


def test_output_layout_and_face_params_view():
    net = tiny_net().eval()
    params, landmarks = net.estimate(random_images(3))
    assert isinstance(params, FaceParams)
    assert params.to_vector().shape == (3, NUM_PARAMS)
    assert landmarks.shape == (3, 68, 2)
    assert params.pose.shape == (3, 6) and params.light.shape == (3, 27)
    # The zero-initialised last layer predicts the distribution mean at the image centre.
    assert torch.allclose(params.to_vector(), net.param_mean.expand(3, -1))
    assert torch.allclose(landmarks, torch.full_like(landmarks, 32.0))
    out = net(random_images(2))
    assert out.params.shape == (2, NUM_PARAMS) and out.params_normalized.shape == (2, NUM_PARAMS)
    assert torch.allclose(net.denormalize_params(net.normalize_params(out.params)), out.params, atol=1e-5)


@pytest.mark.parametrize("channels, size", [(8, 16), (12, 9), (24, 8)])
def test_subsampled_pointwise_conv_equals_a_strided_1x1_conv(channels: int, size: int) -> None:
    # The shortcut projection avoids oneDNN's strided 1x1 channels-last backward (a heap
    # corruption below 16 channels on some CPUs); it must be the same function and gradient.
    torch.manual_seed(0)
    ours = rec.SubsampledPointwiseConv(channels, 2 * channels, 2)
    reference = torch.nn.Conv2d(channels, 2 * channels, 1, stride=2, bias=False)
    reference.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, channels, size, size, requires_grad=True)
    y_ours, y_ref = ours(x.contiguous(memory_format=torch.channels_last)), reference(x)
    assert y_ours.shape == y_ref.shape == (3, 2 * channels, (size + 1) // 2, (size + 1) // 2)
    torch.testing.assert_close(y_ours, y_ref)
    g_ours = torch.autograd.grad(y_ours.square().sum(), (x, ours.weight))
    g_ref = torch.autograd.grad(y_ref.square().sum(), (x, reference.weight))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)
    assert set(ours.state_dict()) == set(reference.state_dict())  # checkpoints unchanged


def test_angles_are_predicted_in_radians_not_normalised():
    mean, std = rec.parameter_statistics(count=512)
    assert torch.all(mean[rec.ANGLE_SLICE] == 0) and torch.all(std[rec.ANGLE_SLICE] == 1)
    # Other dimensions are normalised by the sampled distribution: identity ~ N(0, 1).
    assert abs(float(std[SLICES["identity"]].mean()) - 1.0) < 0.1


def test_value_range_minus_one_one_is_converted():
    net = tiny_net().eval()
    images = random_images(2)
    a, la = net.estimate(images)
    b, lb = net.estimate(images * 2 - 1, value_range=(-1, 1))
    assert torch.allclose(a.to_vector(), b.to_vector(), atol=1e-5) and torch.allclose(la, lb, atol=1e-4)
    # GAN outputs overshoot [-1, 1] a little: clamped, not rejected.
    net.estimate((images * 2 - 1) * 1.1, value_range=(-1, 1))
    # 0..255 values said to be GAN images: refused, with the conversion.
    with pytest.raises(ValueError, match=r"far outside value_range \(-1, 1\); they look like 0\.\.255 values: divide by 255"):
        net.estimate(images * 255, value_range=(-1, 1))


def test_estimate_is_differentiable_in_the_images():
    net = tiny_net()
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)  # the zero-initialised last layer would pass no gradient
    net.eval().requires_grad_(False)
    images = random_images(2).requires_grad_(True)
    params, landmarks = net.estimate(images)
    (params.pose.sum() + landmarks.sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: [[0.5]], TypeError, ["torch.Tensor"]),
        (lambda: (random_images(1) * 255).to(torch.uint8), TypeError, ["uint8", "/ 255"]),
        (lambda: random_images(1)[0], ValueError, ["images[None]"]),
        (lambda: random_images(1)[:, :1], ValueError, ["grayscale", "expand"]),
        (lambda: random_images(1).permute(0, 2, 3, 1), ValueError, ["channels", "permute"]),
        (lambda: torch.rand(1, 3, 128, 128), ValueError, ["128x128", "64x64", "interpolate"]),
        (lambda: random_images(1).index_fill(2, torch.tensor([3]), float("nan")), ValueError, ["NaN"]),
        (lambda: random_images(1) * 2 - 1, ValueError, ["[-1, 1]", "value_range=(-1, 1)", "to_unit"]),
        (lambda: random_images(1) * 255, ValueError, ["255"]),
    ],
    ids=["list", "uint8", "unbatched", "grayscale", "channels-last", "wrong-size", "nan", "gan-range", "0-255"],
)
def test_input_errors_say_what_to_do(make, error, words):
    net = tiny_net().eval()
    with pytest.raises(error) as info:
        net.estimate(make())
    for word in words:
        assert word in str(info.value), str(info.value)


# -- augmentation ---------------------------------------------------------------


def test_shift_moves_landmarks_with_the_image():
    """Known answer: a bright pixel under each landmark stays under the shifted landmark."""
    batch = 4
    g = torch.Generator().manual_seed(0)
    landmarks = torch.randint(5, 59, (batch, 68, 2), generator=g).float() + 0.5  # pixel centres
    images = torch.zeros(batch, 3, 64, 64)
    for b in range(batch):
        images[b, :, landmarks[b, :, 1].long(), landmarks[b, :, 0].long()] = 1.0
    params = torch.zeros(batch, NUM_PARAMS)
    config = rec.AugmentConfig(max_shift_px=2, blur_prob=0.0, noise_std=0.0, brightness=0.0, channel_gain=0.0)
    out = rec.augment(images, landmarks, params, torch.Generator().manual_seed(1), config)
    assert out["shift"].abs().max() <= 2 and out["shift"].abs().sum() > 0
    assert torch.equal(out["landmarks"] - landmarks, out["shift"].float()[:, None, :].expand_as(landmarks))
    for b in range(batch):
        u, v = out["landmarks"][b, :, 0].long(), out["landmarks"][b, :, 1].long()
        assert torch.all(out["images"][b, :, v, u] == 1.0)
    # Fast path == reference (pad and crop) for every shift.
    shifts = torch.stack(torch.meshgrid(torch.arange(-2, 3), torch.arange(-2, 3), indexing="ij"), -1).reshape(-1, 2)
    many = torch.rand(len(shifts), 3, 64, 64, generator=g)
    assert torch.equal(rec.shift_images(many, shifts), rec.shift_images_reference(many, shifts))


def test_shift_moves_translation_labels_consistently_with_the_camera():
    """A shift of (dx, dy) pixels changes (tx, ty) so the head origin projects dx, dy pixels further."""
    camera = Camera()
    params = torch.zeros(3, NUM_PARAMS)
    params[:, SLICES["pose"].start + 3 :] = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0], [-1.0, 1.0, -3.0]])
    config = rec.AugmentConfig(max_shift_px=2, blur_prob=0.0, noise_std=0.0, brightness=0.0, channel_gain=0.0)
    out = rec.augment(torch.rand(3, 3, 64, 64), torch.zeros(3, 68, 2), params, torch.Generator().manual_seed(3), config,
                      cm_per_px=1.0 / camera.focal_pixels, camera_distance=camera.distance)
    before, _ = camera.project(params[:, None, SLICES["pose"].start + 3 :])
    after, _ = camera.project(out["params"][:, None, SLICES["pose"].start + 3 :])
    assert torch.allclose(after[:, 0] - before[:, 0], out["shift"].float(), atol=1e-4)


def test_colour_gain_scales_the_light_labels_like_the_image():
    images = 0.2 + 0.5 * random_images(3)  # no clipping
    params = torch.randn(3, NUM_PARAMS, generator=torch.Generator().manual_seed(0))
    config = rec.AugmentConfig(max_shift_px=0, blur_prob=0.0, noise_std=0.0, brightness=0.1, channel_gain=0.05)
    out = rec.augment(images, torch.zeros(3, 68, 2), params, torch.Generator().manual_seed(0), config)
    image_gain = (out["images"] / images).mean(dim=(2, 3))  # [B, 3]
    light_gain = out["params"][:, SLICES["light"]].view(3, 3, 9) / params[:, SLICES["light"]].view(3, 3, 9)
    assert torch.allclose(light_gain, image_gain[:, :, None].expand(3, 3, 9), atol=1e-5)
    assert not torch.allclose(image_gain, torch.ones(3, 3))
    others = [s for name, s in SLICES.items() if name != "light"]
    assert all(torch.equal(out["params"][:, s], params[:, s]) for s in others)


def test_augmentation_is_seeded_and_blur_keeps_flat_images():
    images, lm, params = random_images(2), torch.zeros(2, 68, 2), torch.zeros(2, NUM_PARAMS)
    a = rec.augment(images, lm, params, torch.Generator().manual_seed(7))
    b = rec.augment(images, lm, params, torch.Generator().manual_seed(7))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["images"].min() >= 0 and a["images"].max() <= 1
    flat = torch.full((2, 3, 64, 64), 0.4)
    assert torch.allclose(rec.gaussian_blur(flat, torch.tensor([0.5, 1.0])), flat, atol=1e-6)
    assert torch.allclose(rec.gaussian_blur(images, torch.zeros(2)), images, atol=1e-6)


# -- checkpoints ------------------------------------------------------------------


def test_checkpoint_save_load_gives_identical_outputs(tmp_path):
    net = tiny_net()
    net.train()
    net(random_images(8, seed=3))  # move the BatchNorm running statistics away from their init
    net.head[-1].weight.data.normal_()
    net.eval()
    path = net.save(tmp_path / "f.pt")
    loaded = rec.ReconstructionNet.load(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == net.config
    images = random_images(4, seed=5)
    a, b = net(images), loaded(images)
    assert torch.equal(a.params, b.params) and torch.equal(a.landmarks, b.landmarks)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-f"):
        rec.ReconstructionNet.load(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an F checkpoint"):
        rec.ReconstructionNet.load(tmp_path / "other.pt")
    # Empty, truncated, random bytes: a clear error each, never torch's advice to use weights_only=False.
    from bad_files import BAD_FILE_WORDS, bad_checkpoints
    from stylerig_lite.io_utils import CheckpointError

    good = tiny_net().save(tmp_path / "f.pt")
    for kind, path in bad_checkpoints(tmp_path, good).items():
        with pytest.raises(CheckpointError, match=BAD_FILE_WORDS[kind]) as error:
            rec.ReconstructionNet.load(path)
        assert "F checkpoint" in str(error.value) and "train-f" in str(error.value), kind
        assert "weights_only" not in str(error.value), kind


# -- training -----------------------------------------------------------------------


def _tiny_train_config(tmp_path, **changes) -> train_f.TrainConfig:
    # One thread: the test machine is shared, and oversubscribed threads make tiny steps many times slower.
    config = train_f.make_config("tiny", out=str(tmp_path / "f.pt"), images=16, batch=8, val_images=0, checkpoint_seconds=1e9,
                                 threads=1)
    return dataclasses.replace(config, **changes)


def test_short_training_run_lowers_the_loss(tmp_path, dataset):
    config = _tiny_train_config(tmp_path, steps=30, batch=16, augment=False)
    torch.manual_seed(0)
    fresh = rec.ReconstructionNet(config.network_config()).eval()

    def loss_of(net):
        with torch.no_grad():
            out = net(dataset.float_images())
            return float(rec.reconstruction_loss(net, out, dataset.params, dataset.landmarks)[0])

    state = train_f.train(config, dataset=dataset, progress=False, log=lambda s: None)
    assert state.step == 30 and not state.net.training
    # Eval mode uses BatchNorm running statistics, which lag behind after 30 steps: a smaller drop.
    assert loss_of(state.net) < 0.85 * loss_of(fresh)
    assert state.history[-1]["loss"] < 0.5 * state.history[0]["loss"]
    loaded = rec.ReconstructionNet.load(config.out)  # the training checkpoint is a loadable F
    assert torch.equal(loaded(dataset.float_images()).params, state.net(dataset.float_images()).params)


def test_resume_continues_exactly(tmp_path, dataset):
    straight = train_f.train(_tiny_train_config(tmp_path / "a", steps=6), dataset=dataset, progress=False, log=lambda s: None)
    half = _tiny_train_config(tmp_path / "b", steps=3)
    train_f.train(half, dataset=dataset, progress=False, log=lambda s: None)
    data = torch.load(half.out, weights_only=True)
    assert data["train"]["step"] == 3
    resumed = train_f.train(dataclasses.replace(half, steps=6), dataset=dataset, progress=False, log=lambda s: None)
    assert resumed.step == 6
    opt_a, opt_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert [s["step"] for s in opt_a["state"].values()] == [s["step"] for s in opt_b["state"].values()]
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    # A checkpoint from different options is not silently resumed.
    with pytest.raises(ValueError, match="differs.*width"):
        train_f.train(dataclasses.replace(half, width=4, steps=8), dataset=dataset, progress=False)


def test_photometric_term_trains_through_the_renderer(tmp_path, world, dataset):
    config = _tiny_train_config(tmp_path, steps=2, batch=4, photometric_weight=1.0)
    state = train_f.train(config, world=world, dataset=dataset, progress=False, log=lambda s: None)
    photometric = [entry["photometric"] for entry in state.history]
    assert photometric and all(math.isfinite(v) and v > 0 for v in photometric)
    # Without face masks (a datasets.render_shards folder) the term is refused with a reason.
    no_masks = dataclasses.replace(dataset, face_mask=None, scene={})
    with pytest.raises(ValueError, match="face masks"):
        train_f.train(dataclasses.replace(config, out=str(tmp_path / "g.pt")), world=world, dataset=no_masks, progress=False)


def test_learning_rate_schedule():
    config = train_f.make_config("default", steps=1000, warmup_steps=100, lr=1e-3)
    assert train_f.learning_rate(config, 0) == pytest.approx(1e-5)
    assert train_f.learning_rate(config, 99) == pytest.approx(1e-3)
    assert train_f.learning_rate(config, 1000) == pytest.approx(2e-5)


# -- evaluation and the command line ------------------------------------------------


def test_evaluate_estimator_and_agreement(world, dataset):
    net = tiny_net().eval()
    metrics = evaluate.evaluate_estimator(net, world, 8, 0, dataset=dataset.subset(slice(0, 8)), batch_size=4)
    for key in ("yaw_deg_median", "pitch_deg_mean", "roll_deg_mean", "expression_mae", "light_rmse", "identity_rmse",
                "albedo_rmse", "landmarks_px_mean", "photometric_face_mae_255", "yaw_deg_mean_mean_predictor"):
        assert math.isfinite(metrics[key]), key
    # Known answer: the untrained net predicts yaw 0 (its zero last layer outputs the mean, and angles have mean 0).
    true_yaw = torch.rad2deg(FaceParams.from_vector(dataset.params[:8]).pose[:, 0])
    assert metrics["yaw_deg_mean"] == pytest.approx(float(true_yaw.abs().mean()), rel=1e-4)
    assert metrics["photometric_face_mae_255"] > 1.0  # the mean face does not re-render the images
    self_agreement = rec.estimator_agreement(net, net, dataset.float_images(slice(0, 4)))
    assert self_agreement["yaw_deg_mean"] == 0 and self_agreement["landmarks_px_mean"] == 0


def test_cli_train_f_tiny(tmp_path, world, dataset, small_chunks, cache_dir, monkeypatch, capsys):
    from stylerig_lite import cli

    monkeypatch.setattr("stylerig_lite.world.FaceWorld", lambda: world)  # reuse the loaded world
    out = tmp_path / "cli_f.pt"
    argv = ["train-f", "--out", str(out), "--preset", "tiny", "--images", "16", "--steps", "3", "--batch", "4",
            "--val-images", "4", "--cache-dir", str(cache_dir), "--threads", "1", "--quiet"]
    assert cli.main(argv) == 0
    data = torch.load(out, weights_only=True)
    assert data["train"]["step"] == 3 and data["train"]["config"]["width"] == 8
    assert cli.main(argv[:8] + ["6"] + argv[9:]) == 0  # same command, more steps: resumes
    assert "resuming" in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["train"]["step"] == 6
    # A corrupt checkpoint in --out: a clean error and exit status 2, not a traceback.
    out.write_bytes(out.read_bytes()[:2000])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "stylerig-lite train-f: error:" in err and "truncated or corrupt" in err and "--fresh" in err, err
    assert "weights_only" not in err
