"""RigNet (stylerig_lite.rignet) and its training loop (stylerig_lite.train_rignet).

Everything runs on small random networks: a 16 px ``tiny`` StyleGAN2 (6 ws x 32)
and an F that reads 16 px images, so the whole file takes seconds. The 10x256
and 18x512 shapes are checked on RigNet alone (no generator needed).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from stylerig_lite import cli, losses, morphable, pretrained, reconstruction, stylegan2
from stylerig_lite.rignet import (
    COMPONENTS,
    LossWeights,
    RigNet,
    RigNetConfig,
    RigSample,
    consistency_loss,
    describe,
    edit_loss,
    freeze,
    get_component,
    rec_loss,
    rig_losses,
    splice,
)
from stylerig_lite import train_rignet

SIZE = 16  # F's (and the loss renders') image size in these tests


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def face_model(ict_mirror) -> morphable.FaceModel:
    del ict_mirror  # only makes the test skip (or fail in CI) without the asset mirror
    return morphable.load_face_model(progress=False)


@pytest.fixture(scope="module")
def render(face_model):
    from stylerig_lite.face_render import default_camera

    return losses.RenderLoss(face_model, default_camera(SIZE))


def tiny_G() -> stylegan2.Generator:
    return freeze(stylegan2.Generator("tiny", seed=0))


def tiny_F(G: stylegan2.Generator, seed: int = 0) -> reconstruction.ReconstructionNet:
    """A random F on 16 px images whose estimates actually vary with G's images.

    An untrained F would not do: its zero-initialised last layer passes no gradient,
    and with BatchNorm statistics that do not match the images its features barely
    change from image to image. So the head is re-drawn and BatchNorm is calibrated
    on G's images, as training would have done.
    """
    from stylerig_lite.rignet import estimator_input

    torch.manual_seed(seed)
    config = reconstruction.ReconstructionConfig(image_size=SIZE, widths=(4, 8, 16, 32), head_hidden=16)
    F = reconstruction.ReconstructionNet(config)
    torch.nn.init.normal_(F.head[-1].weight, std=0.3)
    for module in F.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
            module.reset_running_stats()
    with torch.no_grad():
        w = G.mapping(torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(seed + 100)), None)
        F.train()(estimator_input(G.synthesis(w, noise_mode="const"), SIZE))
    return freeze(F)


def random_w(num_ws: int, w_dim: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, num_ws, w_dim, generator=torch.Generator().manual_seed(seed))


def perturbed(net: RigNet, seed: int = 1, scale: float = 0.1) -> RigNet:
    """Give the (zero-initialised) decoders random weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for decoder in net.decoders:
            decoder.weight.copy_(torch.randn(decoder.weight.shape, generator=g) * scale)
    return net


# -- the network -----------------------------------------------------------------------


@pytest.mark.parametrize("num_ws,w_dim", [(6, 32), (10, 256), (18, 512)])
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_shapes_and_identity_at_init(num_ws, w_dim, component):
    net = RigNet(RigNetConfig(component=component, num_ws=num_ws, w_dim=w_dim))
    w = random_w(num_ws, w_dim)
    size = COMPONENTS[component].size
    p = torch.randn(3, size)
    w_hat = net(w, p)
    assert w_hat.shape == (3, num_ws, w_dim)
    assert torch.equal(w_hat, w)  # zero decoder: an untrained RigNet changes nothing
    full = morphable.sample_params(3, seed=0).to_vector()
    assert torch.equal(net.rig(w, full), w)
    perturbed(net)
    assert net.rig(w, full).shape == (3, num_ws, w_dim)
    assert not torch.equal(net(w, p), w)


def test_component_table():
    assert COMPONENTS["pose"].size == 3  # rotation only
    assert COMPONENTS["expression"].size == 53
    assert COMPONENTS["light"].size == 27
    assert get_component("illumination") is COMPONENTS["light"]  # the paper's name is an alias
    full = morphable.sample_params(2, seed=1)
    assert torch.equal(COMPONENTS["pose"].take(full.to_vector()), full.pose[:, :3])
    assert torch.equal(COMPONENTS["expression"].take(full.to_vector()), full.expression)
    assert torch.equal(COMPONENTS["light"].take(full.to_vector()), full.light)
    # The decoder sees standardised parameters: order one for FaceWorld's distribution.
    net = RigNet(RigNetConfig(component="light"))
    assert RigNetConfig(component="illumination").component == "light"
    z = net.normalize_params(full.light)
    assert z.abs().max() < 6


def test_each_layer_edit_depends_on_its_own_w_only():
    net = perturbed(RigNet(RigNetConfig(component="pose", num_ws=6, w_dim=32)))
    for layer in net.encoders:  # (random by default; made explicit here)
        torch.nn.init.normal_(layer.weight)
    w, p = random_w(6, 32, batch=2), torch.randn(2, 3)
    d = net.delta(w, p)
    w2 = w.clone()
    w2[:, 2] += 1.0
    d2 = net.delta(w2, p)
    changed = (d2 - d).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, False, True, False, False, False]


def test_rig_reads_only_its_component():
    net = perturbed(RigNet(RigNetConfig(component="expression", num_ws=6, w_dim=32)))
    w = random_w(6, 32, batch=2)
    a = morphable.sample_params(2, seed=2).to_vector()
    b = splice(morphable.sample_params(2, seed=3).to_vector(), a, "expression")  # same expression, all else differs
    assert torch.equal(net.rig(w, a), net.rig(w, b))
    assert torch.equal(net.rig(w, morphable.FaceParams.from_vector(a)), net.rig(w, a))


def test_clear_errors():
    with pytest.raises(KeyError, match=r"'pose', 'expression', 'light'"):
        get_component("smile")
    with pytest.raises(KeyError, match="illumination"):
        RigNetConfig(component="lighting")
    with pytest.raises(KeyError, match="expected one of"):
        pretrained.rignet("yaw")
    net = RigNet(RigNetConfig(component="pose", num_ws=10, w_dim=256))
    p = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"dimension 1 is 18, must be 10.*10 ws x 256"):
        net(random_w(18, 256, batch=2), p)
    with pytest.raises(ValueError, match="dimension 2 is 512, must be 256"):
        net(random_w(10, 512, batch=2), p)
    with pytest.raises(ValueError, match=r"one w per sample.*repeat"):
        net(torch.zeros(2, 256), p)
    with pytest.raises(ValueError, match=r"p \(pose parameters"):
        net(random_w(10, 256, batch=2), torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"dimension 0 is 3, must be 2"):
        net(random_w(10, 256, batch=2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"use rignet.rig"):
        net(random_w(10, 256, batch=2), torch.zeros(2, 196))
    with pytest.raises(ValueError, match="full vector"):
        net.rig(random_w(10, 256, batch=2), torch.zeros(2, 195))
    w = random_w(10, 256, batch=2)
    w[0, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(w, p)
    with pytest.raises(ValueError, match="NaN"):
        net(random_w(10, 256, batch=2), torch.tensor([[0.0, float("nan"), 0.0]] * 2))
    with pytest.raises(ValueError, match="positive integer"):
        RigNetConfig(num_ws=0)
    with pytest.raises(ValueError, match=r"request_gain of the pose RigNet.*must be 3"):
        net.set_request_gain([1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        net.set_request_gain([1.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="must be positive"):
        net.set_request_gain([1.0, 0.0, 1.0])
    assert net.request_gain is None  # a refused gain leaves none set


def test_save_load_round_trip(tmp_path):
    net = perturbed(RigNet(RigNetConfig(component="light", num_ws=6, w_dim=32, latent_dim=8)))
    path = net.save(tmp_path / "sub" / "rig.pt")
    assert not list(path.parent.glob(".*tmp*"))  # atomic: no temporary left behind
    loaded = RigNet.load(path)
    assert loaded.config == net.config and not loaded.training
    assert all(not q.requires_grad for q in loaded.parameters())
    w, p = random_w(6, 32), torch.randn(3, 27)
    assert torch.equal(loaded(w, p), net(w, p))
    assert torch.equal(pretrained.rignet("illumination", path)(w, p), net(w, p))
    with pytest.raises(FileNotFoundError, match="train-rignet"):
        RigNet.load(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a RigNet checkpoint"):
        RigNet.load(tmp_path / "other.pt")


def test_layer_mask_edits_only_the_first_layers():
    """edit_layers=K: layers >= K keep w exactly (fast, reference and bound paths); layers < K edit as before."""
    free = randomised(RigNet(RigNetConfig(component="pose", num_ws=6, w_dim=32, latent_dim=8)))
    masked = RigNet(RigNetConfig(component="pose", num_ws=6, w_dim=32, latent_dim=8, edit_layers=2))
    masked.load_state_dict(free.state_dict())  # same weights; only the mask differs
    assert "layer_mask" not in masked.state_dict() and "edit_layers=2" in repr(masked)
    w = random_w(6, 32, batch=3)
    p = torch.randn(3, 3, generator=torch.Generator().manual_seed(4)) * 0.3
    for impl in ("fast", "ref"):
        out = masked(w, p, impl=impl)
        assert torch.equal(out[:, 2:], w[:, 2:]), impl
        torch.testing.assert_close(out[:, :2], free(w, p)[:, :2], rtol=1e-5, atol=1e-6)
        assert not torch.equal(out[:, :2], w[:, :2])
    full = torch.zeros(3, 196)
    full[:, COMPONENTS["pose"].slice] = p
    with torch.no_grad():
        torch.testing.assert_close(masked.bind(w)(full), masked.rig(w, full), rtol=1e-5, atol=1e-6)
    # No gradient reaches the masked layers' modules, so training leaves them as they are.
    (masked(w, p) ** 2).sum().backward()
    for i in range(6):
        for layer in (masked.encoders[i], masked.decoders[i]):
            assert bool(layer.weight.grad.abs().sum() > 0) == (i < 2), i


def test_layer_mask_config_round_trip_and_errors(tmp_path):
    config = RigNetConfig(component="expression", num_ws=6, w_dim=32, latent_dim=8, edit_layers=4)
    assert config.num_edited == 4 and RigNetConfig(num_ws=6).num_edited == 6
    net = randomised(RigNet(config))
    loaded = RigNet.load(net.save(tmp_path / "masked.pt"))
    assert loaded.config.edit_layers == 4
    w, p = random_w(6, 32), torch.randn(3, 53)
    assert torch.equal(loaded(w, p), net(w, p)) and torch.equal(loaded(w, p)[:, 4:], w[:, 4:])
    old = config.to_dict()
    del old["edit_layers"]  # a checkpoint written before the mask existed: all layers
    assert RigNetConfig.from_dict(old).edit_layers is None
    for bad in (0, 7, 2.5):
        with pytest.raises(ValueError, match="edit_layers"):
            RigNetConfig(num_ws=6, edit_layers=bad)
    with pytest.raises(ValueError, match="--edit-layers"):
        train_rignet.make_config("tiny", edit_layers=0)


# -- the batched fast path and the bound (editor) path ------------------------------------------


def randomised(net: RigNet, seed: int = 2) -> RigNet:
    """Random encoders *and* decoders, biases included (perturbed() leaves the decoder biases at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [*net.encoders, *net.decoders]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.1)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
    return net


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_fast_path_equals_the_per_layer_reference(component):
    net = randomised(RigNet(RigNetConfig(component=component, num_ws=6, w_dim=32, latent_dim=8)))
    w = random_w(6, 32, batch=3)
    p = torch.randn(3, COMPONENTS[component].size, generator=torch.Generator().manual_seed(4))
    fast, ref = net.delta(w, p), net.delta(w, p, impl="ref")
    assert fast.shape == ref.shape == (3, 6, 32) and fast.is_contiguous()
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net(w, p), net(w, p, impl="ref"), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="impl"):
        net.delta(w, p, impl="slow")


def test_fast_path_gradients_equal_the_reference():
    """Training uses the fast path: the same gradients reach the per-layer weights and the inputs."""
    net = randomised(RigNet(RigNetConfig(component="expression", num_ws=6, w_dim=32, latent_dim=8)))
    w = random_w(6, 32, batch=2).requires_grad_()
    p = torch.randn(2, 53, generator=torch.Generator().manual_seed(3)).requires_grad_()
    grads = {}
    for impl in ("fast", "ref"):
        net.zero_grad()
        w.grad = p.grad = None
        (net(w, p, impl=impl) ** 2).sum().backward()
        grads[impl] = [w.grad.clone(), p.grad.clone()] + [q.grad.clone() for q in net.parameters()]
    assert len(grads["fast"]) == 2 + 4 * 6
    for a, b in zip(grads["fast"], grads["ref"]):  # float32 sums in another order: relative to the scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_stacked_weights_follow_the_layers():
    """The stack is cached without gradients and rebuilt when a weight changes; never in the state dict."""
    net = randomised(RigNet(RigNetConfig(component="pose", num_ws=6, w_dim=32, latent_dim=8))).requires_grad_(False)
    keys = set(net.state_dict())
    assert keys == {"param_mean", "param_std"} | {f"{part}.{i}.{name}" for part in ("encoders", "decoders")
                                                  for i in range(6) for name in ("weight", "bias")}
    w, p = random_w(6, 32), torch.randn(3, 3, generator=torch.Generator().manual_seed(5))
    stacked = net.stacked_weights()
    assert net.stacked_weights() is stacked  # cached
    with torch.no_grad():
        net.decoders[3].weight.mul_(2.0)  # in place (an optimizer step, copy_, load_state_dict ...)
    assert net.stacked_weights() is not stacked
    torch.testing.assert_close(net(w, p), net(w, p, impl="ref"), rtol=1e-5, atol=1e-6)
    other = randomised(RigNet(net.config), seed=7)
    net.load_state_dict(other.state_dict())
    torch.testing.assert_close(net(w, p), other(w, p, impl="ref"), rtol=1e-5, atol=1e-6)
    net.encoders[0] = torch.nn.Linear(32, 8)  # a replaced layer
    torch.testing.assert_close(net(w, p), net(w, p, impl="ref"), rtol=1e-5, atol=1e-6)
    net.double()  # replaced data
    torch.testing.assert_close(net(w.double(), p.double()), net(w.double(), p.double(), impl="ref"))
    assert set(net.state_dict()) == keys
    import copy
    import pickle

    net.stacked_weights()
    assert "_stacked_cache" in net.__dict__
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):  # the cache stays behind
        assert "_stacked_cache" not in clone.__dict__
        torch.testing.assert_close(clone(w.double(), p.double()), net(w.double(), p.double()))
    trainable = randomised(RigNet(net.config))  # gradients wanted: built per call, never cached
    assert trainable.stacked_weights() is not trainable.stacked_weights()
    assert trainable.stacked_weights()[0].requires_grad


def test_bound_rignet_equals_rig_and_follows_its_inputs():
    net = randomised(RigNet(RigNetConfig(component="expression", num_ws=6, w_dim=32, latent_dim=8)))
    net.requires_grad_(False)
    w = random_w(6, 32, batch=2)
    params = [morphable.sample_params(2, seed=s).to_vector() for s in range(3)]
    bound = net.bind(w)
    for p in params + params[:1]:  # a new target each call, then back to the first (cached products)
        torch.testing.assert_close(bound(p), net.rig(w, p), rtol=1e-5, atol=1e-6)
    one = morphable.sample_params(1, seed=5)
    torch.testing.assert_close(net.bind(w[:1])(one), net.rig(w[:1], one), rtol=1e-5, atol=1e-6)  # FaceParams
    with torch.no_grad():
        w[1, 2] += 1.0  # the latent changed in place
        net.decoders[0].bias.add_(0.5)  # and a weight
    torch.testing.assert_close(bound(params[0]), net.rig(w, params[0]), rtol=1e-5, atol=1e-6)
    out = bound(params[0])
    out.add_(1.0)  # the result is the caller's: the cache is not touched
    torch.testing.assert_close(bound(params[0]), net.rig(w, params[0]), rtol=1e-5, atol=1e-6)
    bad = params[0].clone()
    bad[0, morphable.SLICES["expression"].start] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bound(bad)


def test_chained_bound_rignets_equal_rigs_applied_in_turn():
    nets = [randomised(RigNet(RigNetConfig(component=c, num_ws=6, w_dim=32, latent_dim=8)), seed=i)
            for i, c in enumerate(["pose", "expression", "light"])]
    for net in nets:
        net.requires_grad_(False)
    w = random_w(6, 32, batch=2)
    chain = nets[0].bind(w).then(nets[1]).then(nets[2])
    assert chain.rignets == tuple(nets) and chain.rignet is nets[2]
    base = morphable.sample_params(2, seed=0).to_vector()
    for moved in ("pose", "expression", "light", "identity"):  # one component moves per call, as a slider does
        p = base.clone()
        p[:, morphable.SLICES[moved]] += 0.1
        expected = w
        for net in nets:
            expected = net(expected, net.component.take(p), impl="ref")
        torch.testing.assert_close(chain(p), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="RigNet"):
        chain.then(lambda w, p: w)


# -- the losses on hand-built cases ---------------------------------------------------------


def test_rec_loss_known_values():
    w = random_w(6, 32)
    assert torch.equal(rec_loss(w, w), torch.zeros(3))
    assert torch.allclose(rec_loss(w + 0.5, w), torch.full((3,), 0.25))
    net = RigNet(RigNetConfig(component="pose", num_ws=6, w_dim=32))
    assert torch.equal(rec_loss(net(w, torch.randn(3, 3)), w), torch.zeros(3))  # ŵ = w at init


def test_splice():
    base, source = torch.zeros(2, 196), torch.ones(2, 196)
    out = splice(base, source, "pose")
    assert out[:, 190:193].eq(1).all() and out.sum() == 6
    out = splice(base, source, "light")
    assert out[:, 163:190].eq(1).all() and out.sum() == 2 * 27


def _rendered_targets(render, params: torch.Tensor):
    """Images and landmarks that ``params`` explain exactly (the loss's own render, grey background)."""
    with torch.no_grad():
        out = render(params, torch.zeros(params.shape[0], 3, SIZE, SIZE)).render
    mask = out.mask
    return out.image * mask + 0.5 * (1 - mask), out.landmarks


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_edit_and_consistency_losses_hand_built(render, component):
    p_w = morphable.sample_params(2, seed=4).to_vector()
    p_v = morphable.sample_params(2, seed=5).to_vector()
    image_v, landmarks_v = _rendered_targets(render, p_v)
    image_w, landmarks_w = _rendered_targets(render, p_w)
    # A perfect edit: v's component, w's everything else (and junk would not matter either way).
    perfect = splice(p_w, p_v, component)
    assert edit_loss(render, component, perfect, p_v, image_v, landmarks_v).total.abs().max() < 1e-6
    assert consistency_loss(render, component, perfect, p_w, image_w, landmarks_w).total.abs().max() < 1e-6
    # Edit loss sees only the target component: the rest of p̂ may be anything.
    junk = splice(morphable.sample_params(2, seed=6).to_vector(), p_v, component)
    assert edit_loss(render, component, junk, p_v, image_v, landmarks_v).total.abs().max() < 1e-6
    # No edit at all: the edit loss is positive, the consistency loss is zero.
    assert (edit_loss(render, component, p_w, p_v, image_v, landmarks_v).total > 1e-4).all()
    assert consistency_loss(render, component, p_w, p_w, image_w, landmarks_w).total.abs().max() < 1e-6
    # An edit that also changed the identity is caught by consistency.
    broken = perfect.clone()
    broken[:, morphable.SLICES["identity"]] += 2.0 * torch.randn(2, morphable.NUM_IDENTITY, generator=torch.Generator().manual_seed(7))
    assert (consistency_loss(render, component, broken, p_w, image_w, landmarks_w).total > 1e-4).all()


# -- the objective, gradients, training -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup():
    G = tiny_G()
    F = tiny_F(G)
    with torch.no_grad():
        w = G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    sample = describe(G, F, w)
    assert sample.image.shape == (4, 3, SIZE, SIZE)
    return G, F, sample


def _halves(sample: RigSample):
    fields = [f.name for f in dataclasses.fields(RigSample)]
    return RigSample(*(getattr(sample, n)[:2] for n in fields)), RigSample(*(getattr(sample, n)[2:] for n in fields))


def test_gradients_reach_rignet_only(render, tiny_setup):
    G, F, sample = tiny_setup
    sample_w, sample_v = _halves(sample)
    net = RigNet(RigNetConfig.for_generator(G, "pose"))
    loss, parts = rig_losses(net, G, F, render, sample_w, sample_v, LossWeights(rec=0.0))  # edit + consist only
    assert set(parts) >= {"edit", "consist", "target_error"} and "rec" not in parts
    assert parts["edit"].shape == (4,)  # both directions: 2 pairs -> 4 edits
    loss.backward()
    grads = [d.weight.grad for d in net.decoders]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0  # through G and F
    assert all(q.grad is None for q in G.parameters()) and all(q.grad is None for q in F.parameters())
    assert not G.training and not F.training
    # An untrained RigNet returns w itself, so its edit is "no edit" and L_rec is exactly zero.
    _, parts = rig_losses(net, G, F, render, sample_w, sample_v, LossWeights(edit=0.0, consist=0.0))
    assert torch.equal(parts["rec"], torch.zeros(4)) and set(parts) == {"rec"}


def _tiny_config(tmp_path, name: str, **overrides) -> train_rignet.TrainConfig:
    values = dict(out=str(tmp_path / name), component="pose", batch=2, steps=6, log_every=2, checkpoint_seconds=1e9,
                  f="image")
    values.update(overrides)
    return train_rignet.make_config("tiny", **values)


def test_short_training_lowers_the_loss(tmp_path, face_model, tiny_setup):
    G, F, _ = tiny_setup
    # A corpus of two latents and one pair per step: the run must fit that pair (both directions).
    # Most of the loss is out of RigNet's reach (random G and F), so the drop is small but steady.
    # (Adam at 1e-3, the default; AdaDelta at the paper's 0.01 also descends, but ten times slower in 15 steps.)
    with torch.no_grad():
        w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3)), None)
        corpus = [{"w": w[i], "image": G.synthesis(w[i : i + 1], noise_mode="const")[0]} for i in range(2)]
    config = _tiny_config(tmp_path, "rig.pt", steps=15, batch=1, log_every=1, optimizer="adam", lr=1e-3)
    state = train_rignet.train(config, G=G, F=F, corpus=corpus, face_model=face_model, progress=False, log=lambda s: None)
    losses_ = [entry["loss"] for entry in state.history]
    assert state.step == 15 and len(losses_) == 15
    assert max(losses_[-3:]) < 0.995 * losses_[0], losses_
    assert state.history[0]["rec"] == 0.0 and state.history[-1]["rec"] > 0  # ŵ = w at the start, then it edits
    lines = train_rignet.log_path(config.out).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 16))
    assert RigNet.load(config.out).config.num_ws == G.num_ws


def test_resume_matches_an_uninterrupted_run(tmp_path, face_model, tiny_setup):
    G, F, _ = tiny_setup
    quiet = dict(G=G, F=F, face_model=face_model, progress=False, log=lambda s: None)
    whole = train_rignet.train(_tiny_config(tmp_path, "whole.pt"), **quiet)
    # Stopped by --minutes after every single step three times (between log entries), then run to the end.
    for _ in range(3):
        stopped = train_rignet.train(_tiny_config(tmp_path, "parts.pt", minutes=1e-9), **quiet)
    assert stopped.step == 3
    resumed = train_rignet.train(_tiny_config(tmp_path, "parts.pt"), **quiet)
    assert resumed.step == whole.step == 6
    for (name, a), (_, b) in zip(whole.rignet.state_dict().items(), resumed.rignet.state_dict().items()):
        assert torch.equal(a, b), name
    strip = lambda history: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in history]
    assert strip(resumed.history) == strip(whole.history)
    assert len(train_rignet.log_path(tmp_path / "parts.pt").read_text().splitlines()) == len(whole.history)
    # Resuming with options that change the training is refused with the differences named.
    with pytest.raises(ValueError, match="lr: checkpoint 0.001, now 0.1"):
        train_rignet.train(_tiny_config(tmp_path, "parts.pt", steps=8, lr=0.1), **quiet)


def test_training_from_a_corpus(tmp_path, face_model, tiny_setup):
    G, F, _ = tiny_setup
    with torch.no_grad():
        w = G.mapping(torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(3)), None)
        images = G.synthesis(w, noise_mode="const")
    corpus = [{"w": w[i], "image": images[i], "params": torch.zeros(196), "landmarks": torch.zeros(68, 2)} for i in range(6)]
    config = _tiny_config(tmp_path, "corpus.pt", steps=2, component="expression", ablate=["consist"])
    pairs = train_rignet.PairSource(G, F, config, corpus)
    a, b = pairs(0)
    assert any(torch.equal(a.w[0], w[i]) for i in range(6))
    assert torch.equal(pairs(0)[1].w, b.w)  # a function of the step
    state = train_rignet.train(config, G=G, F=F, corpus=corpus, face_model=face_model, progress=False, log=lambda s: None)
    assert state.step == 2 and "consist" not in state.history[-1] and "edit" in state.history[-1]


def test_training_with_a_layer_mask(tmp_path, face_model, tiny_setup):
    G, F, _ = tiny_setup
    quiet = dict(G=G, F=F, face_model=face_model, progress=False, log=lambda s: None)
    state = train_rignet.train(_tiny_config(tmp_path, "masked.pt", steps=3, edit_layers=2), **quiet)
    net = RigNet.load(tmp_path / "masked.pt")
    assert net.config.edit_layers == 2 == state.rignet.config.edit_layers
    for i, decoder in enumerate(net.decoders):  # zero-initialised, and only the edited layers trained
        assert bool(decoder.weight.abs().sum() > 0) == (i < 2), i
    w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1)), None)
    p = torch.randn(2, 3, generator=torch.Generator().manual_seed(2)) * 0.3
    assert torch.equal(net(w, p)[:, 2:], w[:, 2:]) and not torch.equal(net(w, p)[:, :2], w[:, :2])
    with pytest.raises(ValueError, match="edit_layers: checkpoint 2, now 3"):  # resuming with another mask
        train_rignet.train(_tiny_config(tmp_path, "masked.pt", steps=4, edit_layers=3), **quiet)
    with pytest.raises(ValueError, match="edit_layers must be None"):  # more layers than G has
        train_rignet.train(_tiny_config(tmp_path, "wide.pt", edit_layers=G.num_ws + 1), **quiet)


def test_config_validation():
    assert train_rignet.make_config("cpu").optimizer == "adam" and train_rignet.make_config("cpu").lr == 1e-3
    paper = train_rignet.make_config("cpu", optimizer="adadelta", lr=0.01)
    assert isinstance(train_rignet.make_optimizer(RigNet(), paper), torch.optim.Adadelta)
    assert train_rignet.make_config("tiny", ablate=["rec"]).loss_weights() == LossWeights(rec=0.0)
    with pytest.raises(ValueError, match="nothing to train"):
        train_rignet.make_config("tiny", ablate=["rec", "edit", "consist"]).loss_weights()
    with pytest.raises(ValueError, match="unknown --ablate"):
        train_rignet.make_config("tiny", ablate=["photo"])
    with pytest.raises(KeyError, match="expected one of"):
        train_rignet.make_config("tiny", component="gaze")
    with pytest.raises(ValueError, match="unknown preset"):
        train_rignet.make_config("huge")


def test_cli_end_to_end(tmp_path, capsys):
    G = stylegan2.Generator("tiny", seed=0)
    g_path = stylegan2.save_checkpoint(tmp_path / "g.pt", G, G_ema=G)
    f_path = tiny_F(G).save(tmp_path / "f.pt")
    out = tmp_path / "rig_expr.pt"
    argv = ["train-rignet", "--component", "expression", "--out", str(out), "--preset", "tiny", "--steps", "2",
            "--generator", str(g_path), "--f", "image", "--estimator", str(f_path), "--ablate", "rec", "--edit-layers", "3", "--quiet"]
    assert cli.main(argv) == 0
    assert RigNet.load(out).config.component == "expression"
    assert train_rignet.log_path(out).exists()
    saved = torch.load(out, weights_only=True)["train"]["config"]
    assert saved["ablate"] == ["rec"] and saved["steps"] == 2 and saved["edit_layers"] == 3
    assert RigNet.load(out).config.edit_layers == 3
    assert cli.main(argv[:-5] + ["--edit-layers", "3", "--steps", "3", "--quiet"]) == 2  # resuming without the ablation: refused
    assert "ablate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train-rignet", "--component", "smile", "--out", str(out)])


# -- bad files and the generator a RigNet belongs to ---------------------------------------------


def test_bad_checkpoint_files_are_refused_clearly(tmp_path):
    from bad_files import BAD_FILE_WORDS, bad_checkpoints
    from stylerig_lite.io_utils import CheckpointError

    good = perturbed(RigNet(RigNetConfig(component="pose", num_ws=6, w_dim=32, latent_dim=8))).save(tmp_path / "good.pt")
    for kind, path in bad_checkpoints(tmp_path, good).items():
        with pytest.raises(CheckpointError, match=BAD_FILE_WORDS[kind]) as error:
            RigNet.load(path)
        assert "RigNet checkpoint" in str(error.value) and "train-rignet" in str(error.value), kind
        assert "weights_only" not in str(error.value), kind


def test_a_trained_rignet_records_its_generator_and_refuses_another(tmp_path, face_model, tiny_setup):
    from stylerig_lite.io_utils import module_sha256
    from stylerig_lite.rignet import GeneratorMismatchError

    G, F, _ = tiny_setup
    other = freeze(stylegan2.Generator("tiny", seed=1))
    quiet = dict(G=G, F=F, face_model=face_model, progress=False, log=lambda s: None)
    train_rignet.train(_tiny_config(tmp_path, "bound.pt", steps=1), **quiet)
    net = RigNet.load(tmp_path / "bound.pt")
    assert net.generator_sha256 == module_sha256(G) and net.generator_file_sha256 is None  # G was passed in memory
    net.check_generator(G)
    with pytest.raises(GeneratorMismatchError, match=rf"this pose RigNet was trained on the generator with sha256 "
                                                     rf"{module_sha256(G)[:12]}\.\.\.; you passed a generator with "
                                                     rf"sha256 {module_sha256(other)[:12]}") as error:
        net.check_generator(other)
    assert "stylerig-lite train-rignet --component pose --generator" in str(error.value)
    # Resuming the run with another generator is refused too.
    with pytest.raises(GeneratorMismatchError, match="cannot resume"):
        train_rignet.train(_tiny_config(tmp_path, "bound.pt", steps=2), **{**quiet, "G": other})
    # A RigNet with no record (built in memory, or saved before the record existed) is not checked.
    RigNet(RigNetConfig.for_generator(G, "pose")).check_generator(other)
    # A record of the file only resolves the network hash when first needed, once.
    calls = []
    lazy = RigNet(RigNetConfig.for_generator(G, "pose")).record_generator(
        file_sha256="ab" * 32, sha256_from=lambda: calls.append(1) or module_sha256(G))
    lazy.check_generator(other, file_sha256="ab" * 32)  # the file hash matches: enough
    assert calls == []
    lazy.check_generator(G)
    with pytest.raises(GeneratorMismatchError, match=r"\(file sha256 abababababab\.\.\.\)"):
        lazy.check_generator(other)
    assert calls == [1]
    assert RigNet.from_checkpoint(lazy.checkpoint()).generator_sha256 == module_sha256(G)  # saved resolved


def test_the_embedded_rignets_refuse_another_generator():
    from stylerig_lite.rignet import GeneratorMismatchError

    manifest = pretrained.read_manifest()
    pose = pretrained.rignet("pose")
    assert pose.generator_file_sha256 == manifest["rignet_pose"]["generator_sha256"] == manifest["generator"]["sha256"]
    pose.check_generator(pretrained.generator())  # the embedded generator: its network hash matches
    with pytest.raises(GeneratorMismatchError, match=rf"file sha256 {manifest['generator']['sha256'][:12]}"):
        pose.check_generator(tiny_G())


def test_cli_refuses_a_corrupt_out_and_a_corpus_of_another_generator(tmp_path, capsys, ict_mirror):
    from stylerig_lite.corpus import make_corpus

    G = stylegan2.Generator("tiny", seed=0)
    g_path = stylegan2.save_checkpoint(tmp_path / "g.pt", G, G_ema=G)
    F = tiny_F(freeze(G))
    f_path = F.save(tmp_path / "f.pt")
    out = tmp_path / "rig.pt"
    argv = ["train-rignet", "--component", "pose", "--out", str(out), "--preset", "tiny", "--steps", "1",
            "--generator", str(g_path), "--f", "image", "--estimator", str(f_path), "--quiet"]
    good = RigNet(RigNetConfig.for_generator(G, "pose")).save(tmp_path / "good.pt").read_bytes()
    for content, words in ((b"", "is empty"), (good[: len(good) // 2], "truncated or corrupt")):
        out.write_bytes(content)
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "stylerig-lite train-rignet: error:" in err and words in err and "--fresh" in err, err
        assert "Traceback" not in err and "weights_only" not in err
    out.unlink()
    # A corpus made with another generator: refused before any step.
    corpus = make_corpus(tmp_path / "corpus", 4, generator=freeze(stylegan2.Generator("tiny", seed=1)), estimator=F,
                         progress=False)
    assert cli.main(argv + ["--corpus", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert f"the corpus {corpus} was made with the generator" in err and "make-corpus --generator" in err, err
    assert not out.exists()
    assert cli.main(argv) == 0  # the checkpoint records the generator's network and file
    net = RigNet.load(out)
    assert net.generator_file_sha256 == pretrained.sha256_of(g_path)
    net.check_generator(stylegan2.load_generator(g_path))
