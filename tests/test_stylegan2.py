"""Tests for stylerig_lite.stylegan2 and stylerig_lite.train_gan (tiny preset, CPU, seconds)."""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from stylerig_lite import io_utils
from stylerig_lite import stylegan2 as sg
from stylerig_lite.stylegan2 import (Discriminator, Generator, OfficialPickleError, StyleGAN2Config,
                                     conv2d_resample, get_config, load_checkpoint, load_generator,
                                     load_official_pickle, modulated_conv2d, save_checkpoint, setup_filter,
                                     upfirdn2d)
from stylerig_lite.train_gan import GANTrainer, TrainConfig, diff_augment, make_blob_source



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads that
    spin-wait for each other can make a step 20x slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**overrides) -> StyleGAN2Config:
    return get_config("tiny", **overrides)


def _z(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn([n, dim], generator=torch.Generator().manual_seed(seed))


def _assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    """Every tensor of ``expected``'s state dict equals ``actual``'s of that name, bit for bit."""
    actual_state = actual.state_dict()
    for name, tensor in expected.state_dict().items():
        assert torch.equal(tensor, actual_state[name]), name


# ----------------------------------------------------------------------------------------------
# Shapes, presets, bad input.


@pytest.mark.parametrize("res,w_dim,arch", [(8, 16, "skip"), (16, 32, "skip"), (32, 24, "resnet")])
def test_output_shapes(res, w_dim, arch):
    cfg = _tiny(img_resolution=res, w_dim=w_dim, z_dim=w_dim + 3, architecture=arch)
    G, D = Generator(cfg, seed=0), Discriminator(cfg, seed=1)
    num_ws = 2 * int(math.log2(res)) - 2  # one per conv layer + the last toRGB
    assert G.num_ws == cfg.num_ws == num_ws
    ws = G.mapping(_z(3, cfg.z_dim))
    assert ws.shape == (3, num_ws, w_dim)
    img = G.synthesis(ws)
    assert img.shape == (3, 3, res, res)
    assert torch.isfinite(img).all()
    assert D(torch.cat([img, img[:1]])).shape == (4, 1)


def test_presets_follow_the_official_layout():
    cfg = get_config("ffhq1024")
    assert (cfg.num_ws, cfg.w_dim, cfg.z_dim) == (18, 512, 512)
    assert [cfg.g_channels(r) for r in cfg.block_resolutions] == [512] * 5 + [256, 128, 64, 32]
    with torch.device("meta"):  # shapes only, no memory
        G = Generator(cfg)
    shapes = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    assert shapes["mapping.fc0.weight"] == (512, 512)
    assert shapes["mapping.w_avg"] == (512,)
    assert shapes["synthesis.b4.const"] == (512, 4, 4)
    assert shapes["synthesis.b128.conv0.weight"] == (256, 512, 3, 3)
    assert shapes["synthesis.b1024.conv1.noise_const"] == (1024, 1024)
    assert shapes["synthesis.b1024.torgb.weight"] == (3, 32, 1, 1)
    assert shapes["synthesis.b8.conv0.affine.weight"] == (512, 512)
    assert sg.count_parameters(G) == 30_370_060  # the official FFHQ-1024 generator's size
    cpu = get_config("cpu64")
    assert cpu.num_ws == 10
    assert [cpu.g_channels(r) for r in cpu.block_resolutions] == [128, 128, 64, 32, 16]
    assert [cpu.d_channels(r) for r in (64, 32, 16, 8, 4)] == [16, 32, 64, 128, 128]


def test_wrong_latent_shapes_raise_clear_errors():
    G = Generator(_tiny(), seed=0)
    with pytest.raises(ValueError, match="z \\(mapping input\\)"):
        G(torch.randn(2, G.z_dim + 1))
    with pytest.raises(ValueError, match="W\\+"):
        G.synthesis(torch.randn(2, G.num_ws - 1, G.w_dim))
    with pytest.raises(ValueError, match="dimension 2"):
        G.synthesis(torch.randn(2, G.num_ws, G.w_dim + 1))
    with pytest.raises(TypeError):
        G.synthesis([[0.0]])
    with pytest.raises(ValueError, match="noise_mode"):
        G(torch.randn(2, G.z_dim), noise_mode="loud")
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(img_resolution=48)
    with pytest.raises(ValueError, match="unknown StyleGAN2 preset"):
        get_config("ffhq2048")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_latent_is_an_error_not_a_nan_image(bad):
    G = Generator(_tiny(), seed=0)
    z = torch.randn(2, G.z_dim)
    z[1, 3] = bad
    with pytest.raises(ValueError, match=r"z \(mapping input\) contains 1 NaN or infinite"):
        G(z)
    with pytest.raises(ValueError, match=r"z \(mapping input\) contains 1 NaN or infinite"):
        G.mapping(z, None)
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    ws[0, 2, 5] = bad
    with pytest.raises(ValueError, match=r"ws \(W\+ latents\) contains 1 NaN or infinite"):
        G.synthesis(ws)
    with pytest.raises(ValueError, match=r"ws \(a single w per sample\) contains 1 NaN or infinite"):
        G.synthesis(ws[:, 2])  # one w per sample, broadcast to W+


# ----------------------------------------------------------------------------------------------
# Custom ops against their reference paths.


@pytest.mark.parametrize("up,down,padding,flip,gain", [
    (1, 1, [1, 2, 2, 1], False, 1.0), (2, 1, [2, 1, 2, 1], False, 4.0), (1, 2, [1, 1, 1, 1], False, 1.0),
    (2, 1, [-1, 3, 0, -2], True, 2.0), (1, 2, [0, 3, -1, 2], True, 1.0), (2, 2, [1, 2, 1, 2], False, 4.0),
    (3, 1, [1, 1, 2, 2], False, 9.0),
])
def test_upfirdn2d_fast_matches_reference(up, down, padding, flip, gain):
    g = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 7, 9], generator=g, dtype=torch.float64)
    f = torch.rand([4, 3], generator=g)  # asymmetric: catches flips
    fast = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="fast")
    ref = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="ref")
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


def test_upfirdn2d_reference_known_answers():
    f = setup_filter([1, 3, 3, 1])
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    ones = torch.ones([1, 1, 8, 8])
    up = sg.upsample2d(ones, f)  # a constant image stays constant away from the border
    assert up.shape == (1, 1, 16, 16)
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.ones([]))
    down = sg.downsample2d(ones, f, impl="ref")
    assert down.shape == (1, 1, 4, 4)
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.ones([]))


@pytest.mark.parametrize("k,up,down,groups,flip_weight", [
    (3, 1, 1, 1, True), (3, 2, 1, 1, False), (3, 2, 1, 2, False), (3, 1, 2, 1, True), (3, 1, 2, 2, True),
    (1, 2, 1, 1, True), (1, 1, 2, 1, True), (3, 2, 1, 1, True),
])
def test_conv2d_resample_fast_matches_reference(k, up, down, groups, flip_weight):
    g = torch.Generator().manual_seed(1)
    x = torch.randn([2, 4, 8, 8], generator=g, dtype=torch.float64)
    w = torch.randn([6, 4 // groups, k, k], generator=g, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1])
    kw = dict(f=f, up=up, down=down, padding=k // 2, groups=groups, flip_weight=flip_weight)
    fast, ref = conv2d_resample(x, w, impl="fast", **kw), conv2d_resample(x, w, impl="ref", **kw)
    assert fast.shape == ref.shape == (2, 6, 8 * up // down, 8 * up // down)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    nhwc = conv2d_resample(x, w, impl="fast", channels_last=True, **kw)
    torch.testing.assert_close(nhwc, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("up,demodulate,k", [(1, True, 3), (2, True, 3), (1, False, 1), (2, False, 3)])
def test_fused_and_nonfused_modconv_agree(up, demodulate, k):
    g = torch.Generator().manual_seed(2)
    x = torch.randn([3, 5, 8, 8], generator=g, dtype=torch.float64)
    w = torch.randn([7, 5, k, k], generator=g, dtype=torch.float64)
    s = torch.randn([3, 5], generator=g, dtype=torch.float64) + 1
    noise = torch.randn([3, 1, 8 * up, 8 * up], generator=g, dtype=torch.float64)
    kw = dict(noise=noise, up=up, padding=k // 2, resample_filter=setup_filter([1, 3, 3, 1]),
              demodulate=demodulate, flip_weight=(up == 1))
    fused = modulated_conv2d(x, w, s, fused_modconv=True, **kw)
    nonfused = modulated_conv2d(x, w, s, fused_modconv=False, **kw)
    ref = modulated_conv2d(x, w, s, fused_modconv=False, impl="ref", **kw)
    torch.testing.assert_close(fused, nonfused, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    if demodulate:  # demodulated weights have unit norm per output channel: the style scale drops out
        torch.testing.assert_close(modulated_conv2d(x, w, 3 * s, fused_modconv=True, **kw), fused)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("up,down,demodulate,k", [(1, 1, True, 3), (2, 1, True, 3), (1, 2, True, 3), (1, 1, False, 1)])
def test_modconv_fast_matches_reference_with_gradients(fused, up, down, demodulate, k):
    """The fast path's demodulation (styles^2 @ sum_kk w^2, no [B, O, I, k, k] tensor) equals the
    official materialised one, forward and gradients w.r.t. input, weight and styles."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn([3, 5, 8, 8], generator=g, dtype=torch.float64)
    w = torch.randn([7, 5, k, k], generator=g, dtype=torch.float64)
    s = torch.randn([3, 5], generator=g, dtype=torch.float64) + 1
    out_res = 8 * up // down
    noise = torch.randn([3, 1, out_res, out_res], generator=g, dtype=torch.float64)
    gout = torch.randn([3, 7, out_res, out_res], generator=g, dtype=torch.float64)
    kw = dict(noise=noise, up=up, down=down, padding=k // 2, resample_filter=setup_filter([1, 3, 3, 1]),
              demodulate=demodulate, flip_weight=(up == 1), fused_modconv=fused)
    results = []
    for impl, channels_last in (("fast", False), ("fast", True), ("ref", False)):
        xi, wi, si = (t.clone().requires_grad_(True) for t in (x, w, s))
        out = modulated_conv2d(xi, wi, si, impl=impl, channels_last=channels_last and not fused, **kw)
        grads = torch.autograd.grad((out * gout).sum(), [xi, wi, si])
        results.append((out.detach(), *grads))
    for other in results[:2]:
        for a, b in zip(other, results[2]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["skip", "resnet"])
def test_generator_fused_nonfused_and_channels_last_give_the_same_image(arch):
    cfg = _tiny(architecture=arch, conv_clamp=0.5, channels_last=False)
    G = Generator(cfg, seed=0)
    G_cl = Generator(cfg.replace(channels_last=True), seed=0)
    D, D_cl = Discriminator(cfg, seed=1), Discriminator(cfg.replace(channels_last=True), seed=1)
    z = _z(4, G.z_dim)
    a = G(z, noise_mode="const", fused_modconv=True)
    b = G(z, noise_mode="const", fused_modconv=False)
    c = G_cl(z, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-5)
    assert c.is_contiguous()
    torch.testing.assert_close(D_cl(a), D(a), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Latent-space behaviour.


def test_truncation():
    G = Generator(_tiny(), seed=0)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    z = _z(3, G.z_dim)
    ws = G.mapping(z)
    torch.testing.assert_close(G.mapping(z, truncation_psi=0), G.mapping.w_avg.expand_as(ws))
    torch.testing.assert_close(G.mapping(z, truncation_psi=1), ws)
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(half[:, :2], (ws[:, :2] + G.mapping.w_avg) / 2)
    torch.testing.assert_close(half[:, 2:], ws[:, 2:])


def test_w_avg_tracks_only_when_asked():
    G = Generator(_tiny(), seed=0).train()
    z = _z(8, G.z_dim)
    G.mapping(z)
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    G.mapping(z, update_emas=True)
    w = G.mapping(z)[:, 0]
    torch.testing.assert_close(G.mapping.w_avg, w.mean(0) * (1 - G.config.w_avg_beta))


def test_wplus_input_equals_broadcast_path():
    G = Generator(_tiny(), seed=0)
    z = _z(3, G.z_dim)
    w = G.mapping(z)[:, 0]  # [B, w_dim]
    full = G(z, noise_mode="const")
    torch.testing.assert_close(G.synthesis(w.unsqueeze(1).repeat(1, G.num_ws, 1), noise_mode="const"), full)
    torch.testing.assert_close(G.synthesis(w, noise_mode="const"), full)
    # Per-layer W+ really is per layer: changing only the last w changes the image.
    ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
    ws[:, -1] += 1
    assert not torch.allclose(G.synthesis(ws, noise_mode="const"), full)


def test_style_mixing_changes_only_layers_after_the_cutoff():
    trainer = GANTrainer(_tiny(), TrainConfig(batch_size=4, style_mixing_prob=1.0, seed=3), make_blob_source(16))
    G = trainer.G
    z = _z(4, G.z_dim)
    plain = G.mapping(z)
    mixed = trainer._mapping_with_mixing(z, update_emas=False)
    same = (mixed == plain).all(dim=2).all(dim=0)  # [num_ws]
    cutoff = int((~same).nonzero()[0])
    assert 1 <= cutoff < G.num_ws
    assert same[:cutoff].all() and not same[cutoff:].any()
    torch.testing.assert_close(mixed[:, cutoff:], mixed[:, cutoff:cutoff + 1].expand_as(mixed[:, cutoff:]))


def test_noise_modes():
    G = Generator(_tiny(), seed=0)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    z = _z(2, G.z_dim)
    torch.testing.assert_close(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.allclose(G(z, noise_mode="random"), G(z, noise_mode="random"))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(G(z, noise_generator=g1), G(z, noise_generator=g2))
    assert not torch.allclose(G(z, noise_mode="none"), G(z, noise_mode="const"))


def test_diff_augment_is_differentiable_and_seeded():
    x = torch.rand([4, 3, 16, 16]) * 2 - 1
    policy = "color,translation,cutout"
    a = diff_augment(x, policy, torch.Generator().manual_seed(0))
    b = diff_augment(x, policy, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and not torch.allclose(a, x)
    xr = x.clone().requires_grad_(True)
    diff_augment(xr, policy, torch.Generator().manual_seed(0)).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    # Translation alone only moves pixels: the multiset of values is kept up to zero padding.
    t = diff_augment(x, "translation", torch.Generator().manual_seed(1))
    assert ((t == 0) | torch.isin(t, x)).all()
    with pytest.raises(ValueError, match="unknown augmentation"):
        diff_augment(x, "rotate", torch.Generator())


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def test_checkpoint_round_trip(tmp_path):
    cfg = _tiny(architecture="resnet", conv_clamp=64.0, w_dim=24)
    G, D = Generator(cfg, seed=0), Discriminator(cfg, seed=1)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    path = save_checkpoint(tmp_path / "ckpt.pt", G, D, G_ema=G, step=7, images_seen=56)
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away
    G2 = load_generator(path)
    assert G2.config == cfg
    assert not G2.training and not any(p.requires_grad for p in G2.parameters())
    _assert_same_weights(G, G2)
    z = _z(3, cfg.z_dim)
    torch.testing.assert_close(G2(z, noise_mode="const", truncation_psi=0.7), G(z, noise_mode="const",
                                                                               truncation_psi=0.7), rtol=0, atol=0)
    payload = load_checkpoint(path)
    assert (payload["step"], payload["images_seen"]) == (7, 56)
    D2 = sg.load_discriminator(path)
    img = G(z)
    torch.testing.assert_close(D2(img), D(img))
    # Compact: half the tensor bytes (per-tensor file overhead dominates at this tiny size),
    # same pictures within fp16 precision.
    small = save_checkpoint(tmp_path / "small.pt", G, D, G_ema=G, compact=True)
    assert small.stat().st_size < 0.8 * path.stat().st_size
    torch.testing.assert_close(load_generator(small)(z, noise_mode="const"), G(z, noise_mode="const"),
                               rtol=2e-2, atol=2e-2)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no StyleGAN2 checkpoint"):
        load_generator(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable"):
        load_generator(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"kind": "rignet", "weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a StyleGAN2 checkpoint"):
        load_generator(other)
    good = save_checkpoint(tmp_path / "g.pt", Generator(_tiny(), seed=0))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable"):
        load_generator(truncated)
    # Empty, truncated, random bytes: one clear CheckpointError each, never torch's weights_only=False advice.
    from bad_files import BAD_FILE_WORDS, bad_checkpoints

    for kind, path in bad_checkpoints(tmp_path, good).items():
        for load in (load_generator, load_checkpoint):
            with pytest.raises(io_utils.CheckpointError, match=BAD_FILE_WORDS[kind]) as error:
                load(path)
            assert "StyleGAN2 checkpoint" in str(error.value) and "weights_only" not in str(error.value), kind


# ----------------------------------------------------------------------------------------------
# Training.


def _train_cfg(**overrides) -> TrainConfig:
    kw = dict(batch_size=4, r1_interval=2, pl_weight=2.0, pl_interval=2, augment="color,translation,cutout",
              seed=11, checkpoint_every=0, sample_every=0, grid_size=(2, 2))
    kw.update(overrides)
    return TrainConfig(**kw)


def _all_state(trainer: GANTrainer) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema)):
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    for name, opt in (("opt_G", trainer.opt_G), ("opt_D", trainer.opt_D)):
        for idx, st in opt.state_dict()["state"].items():
            out.update({f"{name}.{idx}.{k}": torch.as_tensor(v) for k, v in st.items()})
    out["pl_mean"] = trainer.pl_mean
    return out


def test_resume_continues_exactly(tmp_path):
    source = make_blob_source(16)
    straight = GANTrainer(_tiny(), _train_cfg(), source)
    for _ in range(3):
        straight.train_step()

    first = GANTrainer(_tiny(), _train_cfg(), source)
    for _ in range(2):
        first.train_step()
    path = first.save(tmp_path / "resume.pt")
    resumed = GANTrainer.resume(path, source)
    assert (resumed.step, resumed.images_seen) == (2, 8)
    resumed.train_step()

    a, b = _all_state(straight), _all_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    assert straight.gen.get_state().equal(resumed.gen.get_state())


def test_slim_resume_checkpoint_resumes_weights_and_counters(tmp_path):
    """The checkpoint committed between sessions: no optimizer states, fp16 weights, same counters and RNG."""
    from stylerig_lite.train_gan import slim_resume_checkpoint

    source = make_blob_source(16)
    first = GANTrainer(_tiny(), _train_cfg(), source)
    for _ in range(2):
        first.train_step()
    full = first.save(tmp_path / "full.pt", compact=False)
    slim = slim_resume_checkpoint(full, tmp_path / "slim.pt")
    assert slim.stat().st_size < 0.5 * full.stat().st_size
    resumed = GANTrainer.resume(slim, source)
    assert (resumed.step, resumed.images_seen) == (2, 8)
    assert resumed.gen.get_state().equal(first.gen.get_state())
    for name in ("G", "D", "G_ema"):
        for (key, a), b in zip(getattr(first, name).state_dict().items(), getattr(resumed, name).state_dict().values()):
            torch.testing.assert_close(b, a.half().float(), msg=f"{name}.{key}")  # exact up to fp16 rounding
    assert not resumed.opt_G.state_dict()["state"]  # Adam restarts its moments
    resumed.train_step()
    assert resumed.step == 3


def test_slim_resume_checkpoint_with_ema_by_reference(tmp_path):
    """The committed resume state may point at the exported G_ema instead of holding a second copy."""
    from stylerig_lite.train_gan import slim_resume_checkpoint

    source = make_blob_source(16)
    first = GANTrainer(_tiny(), _train_cfg(), source)
    first.train_step()
    full = first.save(tmp_path / "full.pt", compact=False)
    with_copy = slim_resume_checkpoint(full, tmp_path / "slim_copy.pt")
    exported = tmp_path / "weights" / "g_ema.pt"
    exported.parent.mkdir()
    sg.save_generator_only(exported, load_generator(full))
    slim = slim_resume_checkpoint(full, tmp_path / "run" / "slim.pt", ema_file=exported)
    beside = slim_resume_checkpoint(full, tmp_path / "own" / "slim.pt", ema_file=tmp_path / "own" / "ema.pt", write_ema=True)
    assert GANTrainer.resume(beside, source).images_seen == first.images_seen  # its G_ema found beside it
    assert slim.stat().st_size < 0.8 * with_copy.stat().st_size
    with pytest.raises(FileNotFoundError, match="by reference to g_ema.pt"):  # not beside it, not embedded
        GANTrainer.resume(slim, source)
    resumed = GANTrainer.resume(slim, source, ema_file=exported)
    for (key, a), b in zip(first.G_ema.state_dict().items(), resumed.G_ema.state_dict().values()):
        torch.testing.assert_close(b, a.half().float(), msg=key)
    with pytest.raises(FileNotFoundError, match="by reference to g_ema.pt"):
        load_generator(slim)  # looked for beside the checkpoint only ...
    from_dirs = load_generator(slim, search_dirs=[tmp_path / "elsewhere", exported.parent])  # ... or where told
    assert torch.equal(from_dirs.mapping.fc0.weight, resumed.G_ema.mapping.fc0.weight)
    shutil.copy(exported, slim.parent / exported.name)  # found beside the checkpoint
    assert torch.equal(load_generator(slim).mapping.fc0.weight, resumed.G_ema.mapping.fc0.weight)
    exported.write_bytes(exported.read_bytes()[:-3] + b"abc")  # another file of that name: refused by sha256
    with pytest.raises(FileNotFoundError, match="sha256"):
        GANTrainer.resume(slim, source, ema_file=exported)
    other = GANTrainer(_tiny(), _train_cfg(seed=5), source).save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not hold the G_ema"):
        slim_resume_checkpoint(full, tmp_path / "bad.pt", ema_file=other)


def test_short_training_run_learns(tmp_path):
    """On blobs, D learns to separate real from fake and G's colour statistics move toward the data."""
    source = make_blob_source(16)
    cfg = _train_cfg(batch_size=8, r1_interval=4, pl_weight=0.0, augment="", sample_every=64, checkpoint_every=64,
                     grid_size=(2, 2), seed=0)
    trainer = GANTrainer(_tiny(), cfg, source, out_dir=tmp_path)
    real = source(256, torch.Generator().manual_seed(99))
    z = _z(256, trainer.G.z_dim, seed=98)

    def colour_gap() -> float:  # distance between per-channel mean/std of G_ema samples and reals
        with torch.no_grad():
            fake = trainer.G_ema(z, noise_mode="const")
        stats = lambda x: torch.cat([x.mean(dim=[0, 2, 3]), x.std(dim=[0, 2, 3])])  # noqa: E731
        return float((stats(fake) - stats(real)).norm())

    gap0 = colour_gap()
    G0 = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    history = trainer.train(40 * 8, progress=False)
    gap1 = colour_gap()
    d_loss_first, d_loss_last = history[0]["loss_D"], np.mean([h["loss_D"] for h in history[-10:]])
    assert abs(d_loss_first - math.log(4)) < 0.2  # D starts at chance: 2 * softplus(0)
    assert d_loss_last < d_loss_first - 0.05  # ... and learns
    moved = sum(float((trainer.G.state_dict()[k] - v).norm()) for k, v in G0.items() if v.is_floating_point())
    assert moved > 1.0
    assert gap1 < 0.5 * gap0  # G's output statistics approach the data's (seeds 0-2: 8x closer)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "reals.png").exists()
    assert list(tmp_path.glob("fakes*.png"))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["images_seen"] == 320


# ----------------------------------------------------------------------------------------------
# Official NVlabs pickles: structure emulated here, no network, embedded code never executed.

_EVIL_TEMPLATE = "open({marker!r}, 'w').write('executed')\nraise RuntimeError('embedded module source executed')\n"


def _install_fake_official_modules(monkeypatch, marker):
    """Fake ``torch_utils.persistence`` and ``dnnlib.util`` so pickle writes the official global names.

    The fake reconstruct function behaves like the real one: it execs the embedded source. So a
    plain ``pickle.load`` of the files built here *would* run the code (checked below).
    """

    def _reconstruct_persistent_obj(meta):
        module = types.ModuleType("_imported_module_fake")
        exec(meta["module_src"], module.__dict__)  # what the official loader does (!)
        raise AssertionError("unreachable: the source raises")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    for name, mod in (("torch_utils", torch_utils), ("torch_utils.persistence", persistence),
                      ("dnnlib", dnnlib), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, mod)
    return _reconstruct_persistent_obj, EasyDict, _EVIL_TEMPLATE.format(marker=str(marker))


class _Persistent:
    """Pickles exactly like an official persistent-class instance: reconstruct(meta)."""

    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return (self.reconstruct, (self.meta,), None)


def _as_official(module, reconstruct, easydict, src, init_kwargs=None):
    """Wrap a module as the official pickle does: meta with module_src, class_name and __dict__ state."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, None if p is None else torch.nn.Parameter(p.detach().clone(), requires_grad=False))
            for k, p in module._parameters.items()),
        "_buffers": collections.OrderedDict((k, b.clone()) for k, b in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(
            (k, _as_official(m, reconstruct, easydict, src)) for k, m in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": easydict(init_kwargs or {}),
    }
    if hasattr(module, "weight_gain"):
        state["weight_gain"] = np.float64(module.weight_gain)  # official stores numpy scalars
    if hasattr(module, "activation"):
        state["activation"] = module.activation
    meta = dict(type="class", version=6, module_src=src, class_name=type(module).__name__, state=state)
    return _Persistent(reconstruct, meta)


def _official_pickle_bytes(monkeypatch, marker, G, D):
    reconstruct, easydict, src = _install_fake_official_modules(monkeypatch, marker)
    cfg = G.config
    g_kwargs = dict(z_dim=cfg.z_dim, c_dim=0, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution, img_channels=3,
                    mapping_kwargs=easydict(num_layers=cfg.mapping_layers),
                    synthesis_kwargs=easydict(channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                                              num_fp16_res=2, conv_clamp=cfg.conv_clamp))
    snapshot = dict(
        training_set_kwargs=easydict(class_name="training.dataset.ImageFolderDataset", path="ffhq.zip",
                                     resolution=cfg.img_resolution, use_labels=False, max_size=70000),
        G=_as_official(G, reconstruct, easydict, src, g_kwargs),
        D=_as_official(D, reconstruct, easydict, src, dict(c_dim=0, img_resolution=cfg.img_resolution,
                                                           img_channels=3)),
        G_ema=_as_official(G, reconstruct, easydict, src, g_kwargs),
        augment_pipe=None,
    )
    return pickle.dumps(snapshot, protocol=4)


def test_official_pickle_import_round_trip(tmp_path, monkeypatch):
    marker = tmp_path / "EXECUTED"
    cfg = _tiny(conv_clamp=256.0)
    G, D = Generator(cfg, seed=0).eval(), Discriminator(cfg, seed=1)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.2)
    data = _official_pickle_bytes(monkeypatch, marker, G, D)
    assert b"torch_utils.persistence" in data and b"_reconstruct_persistent_obj" in data
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(data)

    # The danger is real: a plain unpickler runs the embedded module source.
    with pytest.raises(RuntimeError, match="embedded module source executed"):
        pickle.loads(data)
    assert marker.exists()
    marker.unlink()

    loaded = load_official_pickle(path)
    assert not marker.exists(), "load_official_pickle executed code embedded in the pickle"
    assert loaded.config.num_fp16_res == 2 and loaded.config.conv_clamp == 256.0
    assert loaded.num_ws == G.num_ws
    _assert_same_weights(G, loaded)
    z = _z(3, cfg.z_dim)
    for psi in (1.0, 0.5):
        torch.testing.assert_close(loaded(z, noise_mode="const", truncation_psi=psi),
                                   G(z, noise_mode="const", truncation_psi=psi, fused_modconv=True))
    record = sg.read_official_pickle(path)["G_ema"]
    assert record.class_name == "Generator" and record.init_kwargs["z_dim"] == cfg.z_dim
    assert not marker.exists()


def test_malicious_pickles_are_refused(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": Exploit()}))
    with pytest.raises(OfficialPickleError, match="found class (posix|nt|os).system"):
        load_official_pickle(bad)
    assert not marker.exists()

    class Exec:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w')",))

    bad.write_bytes(pickle.dumps(Exec()))
    with pytest.raises(OfficialPickleError, match="found class builtins.exec"):
        load_official_pickle(bad)
    assert not marker.exists()

    # A persistent record whose embedded source is harmless is still only data; a pickle without
    # G_ema, a torch.save file and a missing file give clear errors.
    bad.write_bytes(pickle.dumps({"G": 1}))
    with pytest.raises(OfficialPickleError, match="G_ema"):
        load_official_pickle(bad)
    ours = save_checkpoint(tmp_path / "ours.pt", Generator(_tiny(), seed=0))
    with pytest.raises(OfficialPickleError):
        load_official_pickle(ours)
    with pytest.raises(FileNotFoundError):
        load_official_pickle(tmp_path / "nope.pkl")


def test_config_from_official_kwargs():
    legacy = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                  mapping_kwargs=dict(num_layers=8, embed_features=None, layer_features=None, activation="lrelu",
                                      lr_multiplier=0.01, w_avg_beta=0.995),
                  synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
                                        architecture="skip", resample_filter=[1, 3, 3, 1], use_noise=True,
                                        activation="lrelu"))
    cfg = sg.config_from_official_kwargs(legacy)
    ffhq = get_config("ffhq1024")
    assert (cfg.num_ws, cfg.channel_base, cfg.channel_max, cfg.conv_clamp) == (18, 32768, 512, 256.0)
    assert [cfg.g_channels(r) for r in cfg.block_resolutions] == [ffhq.g_channels(r) for r in ffhq.block_resolutions]
    odd = dict(legacy, synthesis_kwargs=dict(legacy["synthesis_kwargs"], activation="relu"))
    with pytest.raises(OfficialPickleError, match="activation"):
        sg.config_from_official_kwargs(odd)


def test_train_gan_resumes_from_out_dir(tmp_path, capsys):
    from stylerig_lite.train_gan import main

    args = ["--out", str(tmp_path), "--preset", "tiny", "--batch", "4", "--checkpoint-every", "8",
            "--sample-every", "8", "--snapshot-every", "4", "--no-progress"]
    assert main(args + ["--images", "8"]) == 0
    first = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (first["step"], first["images_seen"], first["compact"]) == (2, 8, False)
    # Resume: bookkeeping options may change (compact), training options stay the checkpoint's.
    assert main(args + ["--images", "12", "--compact", "--seed", "5"]) == 0
    second = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (second["step"], second["images_seen"], second["compact"]) == (3, 12, True)
    assert second["extra"]["train_config"]["seed"] == 0
    assert "keeping the checkpoint's ['seed'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("fakes*.png")) == ["fakes000000008.png", "fakes000000012.png"]
    # G_ema snapshots are kept on their own schedule across the resume, each a loadable generator
    # holding that moment's G_ema (the last one is the checkpoint's, both stored in float16).
    assert sorted(p.name for p in tmp_path.glob("network-snapshot-*.pt")) == [
        "network-snapshot-000000004.pt", "network-snapshot-000000008.pt", "network-snapshot-000000012.pt"]
    assert load_checkpoint(tmp_path / "network-snapshot-000000004.pt")["images_seen"] == 4
    last, final = load_generator(tmp_path / "network-snapshot-000000012.pt"), load_generator(tmp_path / "checkpoint.pt")
    _assert_same_weights(last, final)
    first_snap = load_generator(tmp_path / "network-snapshot-000000004.pt").state_dict()
    assert any(not torch.equal(first_snap[k], v) for k, v in last.state_dict().items())
    # Files get the usual umask-based mode, not mkstemp's private 0600 (the checkpoint is shared).
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == io_utils.default_file_mode()
    # A corrupt checkpoint in --out: a clean error and exit status 2, not a traceback.
    capsys.readouterr()
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:1000])
    assert main(args + ["--images", "16"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "truncated or corrupt" in err and "--no-resume" in err
    assert "Traceback" not in err and "weights_only" not in err


def test_stylegan2_package_imports_nothing_above_it():
    """The package stands on checks / io_utils / seeding alone: importing it pulls in no pretrained,
    train_gan or distributed (the old stylegan2 -> pretrained -> stylegan2 cycle is gone)."""
    import subprocess

    code = ("import json, sys, stylerig_lite.stylegan2; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('stylerig_lite'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert {"stylerig_lite.stylegan2.ops", "stylerig_lite.stylegan2.networks", "stylerig_lite.stylegan2.checkpoint",
            "stylerig_lite.stylegan2.legacy"} <= loaded
    assert not loaded & {"stylerig_lite.pretrained", "stylerig_lite.train_gan", "stylerig_lite.distributed"}, loaded


def test_bench_gan_times_a_training_step_beside_a_reference(capsys):
    from pathlib import Path

    from stylerig_lite import bench

    tree = str(Path(sg.__file__).resolve().parents[2])  # stylerig_lite/stylegan2/__init__.py -> the source tree
    assert bench.main(["gan", "--json", "--batch", "2", "--steps", "1", "--warmup", "1", "--repeats", "1",
                       "--reference", tree]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images_per_s"] > 0 and result["ref_cpu_images_per_s"] > 0 and result["speedup"] > 0


def test_committed_training_state_resumes_and_the_embedded_generator_is_a_snapshot_of_its_run():
    """training/ holds the GAN run carried between sessions: a slim resume checkpoint that finds its
    G_ema file by sha256. The embedded generator is an earlier G_ema snapshot of the same run."""
    from pathlib import Path

    from stylerig_lite import pretrained

    training = Path(__file__).resolve().parent.parent / "training"
    ema_file = training / "faceworld_gan_ema.pt"
    trainer = GANTrainer.resume(training / "faceworld_gan_resume.pt", make_blob_source(64), ema_file=ema_file)
    _assert_same_weights(load_generator(ema_file), trainer.G_ema)
    ema = load_checkpoint(ema_file)
    assert trainer.images_seen == ema["images_seen"] > 0
    embedded = load_checkpoint(pretrained.embedded_path("generator"))
    assert embedded["config"] == ema["config"]
    assert embedded["G"] is None and embedded["G_ema"] is not None  # a generator-only export
    # The manifest's count is the file's own, and no later than where the resumable run stands.
    assert pretrained.read_manifest()["generator"]["images_seen"] == embedded["images_seen"] <= trainer.images_seen


# ----------------------------------------------------------------------------------------------
# stylegan2.frozen: the editor's traced synthesis, against the eager network (its reference).


def test_frozen_synthesis_gives_the_eager_image_and_retraces_after_a_weight_change():
    from stylerig_lite.stylegan2.frozen import FrozenSynthesis

    G = Generator("cpu64", seed=0).eval().requires_grad_(False)
    frozen = FrozenSynthesis(G.synthesis)
    ws = [G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(s)), None) for s in range(3)]
    with torch.no_grad():
        eager = [G.synthesis(w, noise_mode="const") for w in ws]
        first = frozen(ws[0])  # traces (the eager pass checks ws first)
        assert not frozen.fast and torch.equal(first, eager[0])
        for w, image in zip(ws[1:], eager[1:]):
            assert torch.allclose(frozen(w), image, atol=1e-6, rtol=0) and frozen.fast
        # Weights changed in place (training): the next call traces again and follows the new weights.
        G.synthesis.b8.conv1.bias.add_(0.5)
        changed = G.synthesis(ws[1], noise_mode="const")
        assert not torch.allclose(changed, eager[1], atol=1e-3)
        assert torch.allclose(frozen(ws[1]), changed, atol=1e-6, rtol=0)
        assert torch.allclose(frozen(ws[1]), changed, atol=1e-6, rtol=0) and frozen.fast
        # On more threads than the frozen graph's one: the same image, and the caller's count is kept.
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            assert torch.allclose(frozen(ws[1]), changed, atol=1e-6, rtol=0) and frozen.fast
            assert torch.get_num_threads() == 2
            free = FrozenSynthesis(G.synthesis, threads=None)  # on the caller's two threads, as eager is
            free(ws[1])
            on_two = G.synthesis(ws[1], noise_mode="const")
            assert torch.allclose(free(ws[1]), on_two, atol=1e-6, rtol=0) and free.fast
        finally:
            torch.set_num_threads(threads)
        with pytest.raises(ValueError, match="threads"):
            FrozenSynthesis(G.synthesis, threads=0)
        # Another shape takes the eager path, with the same result.
        both = torch.cat(ws[:2])
        assert torch.equal(frozen(both), G.synthesis(both, noise_mode="const")) and not frozen.fast


def test_frozen_synthesis_refuses_what_the_eager_network_refuses_and_keeps_gradients():
    from stylerig_lite.stylegan2.frozen import FrozenSynthesis

    G = Generator("cpu64", seed=0).eval().requires_grad_(False)
    frozen = FrozenSynthesis(G.synthesis)
    w = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    with torch.no_grad():
        frozen(w)
        frozen(w)
        assert frozen.fast
        with pytest.raises(ValueError, match="NaN"):
            frozen(torch.full_like(w, float("nan")))
    with pytest.raises(ValueError, match="shape"):
        frozen(w[:, :-1])
    # With a gradient to compute, the eager network runs, so backward works.
    leaf = w.clone().requires_grad_(True)
    frozen(leaf).square().mean().backward()
    assert not frozen.fast and leaf.grad is not None and torch.isfinite(leaf.grad).all()
