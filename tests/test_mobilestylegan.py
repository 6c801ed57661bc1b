"""The photoreal MobileStyleGAN: the IR reader, the modules, parity with OpenVINO, the loader's checks.

Parity and the real-weights tests need the PyPI packages ``random-face`` (the weights, installed
with ``--no-deps``) and ``openvino`` (the reference runtime, run in f32): both are in CI's
requirements, so there their absence fails; elsewhere it skips with the reason.
"""

from __future__ import annotations

import contextlib

import importlib.util
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import skip_or_fail
from stylerig_lite import mobilestylegan as msg
from stylerig_lite.mobilestylegan import networks as msg_networks


# ---------------------------------------------------------------------------------------------- fixtures
def _data_dir() -> Path:
    try:
        return msg.find_data_dir()
    except msg.FileIntegrityError as error:
        skip_or_fail(str(error))


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def G(threads):
    """The real generator, loaded once (about 2 s), through the registered loader."""
    from stylerig_lite import pretrained

    _data_dir()
    return pretrained.photoreal_generator()


@pytest.fixture(scope="module")
def openvino_f32(G):
    """OpenVINO's compiled mapping and synthesis in f32 (its CPU default, bf16, differs by up to 0.7)."""
    if importlib.util.find_spec("openvino") is None:
        skip_or_fail("openvino is not installed (the parity reference): pip install openvino==2026.4.1")
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    data = _data_dir()
    return tuple(core.compile_model(core.read_model(str(data / f"{name}.xml")), "CPU", config)
                 for name in ("MappingNetwork", "SynthesisNetwork"))


def _tiny(seed: int = 0, channels=(16, 16, 8)) -> msg.MobileStyleGAN:
    """A random MobileStyleGAN of the real architecture, 2 blocks, 32 px, 8 ws of 16 values: fast checks."""
    G = msg.MobileStyleGAN(w_dim=16, channels=channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "weight" in name else 0.1))
            if name.endswith("modulation.bias"):
                p.add_(1.0)
        for name, b in G.named_buffers():
            if name.endswith("noise_const"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    G.compute_w_avg(samples=256)
    return G.eval()


# ---------------------------------------------------------------------------------------------- IR reader
def _write_tiny_ir(folder: Path, truncate: int = 0) -> Path:
    """y = x @ W.T + b with x [1, 2], W [3, 2] (f32), b [1, 3] (f16 + Convert), written by hand."""
    weight = np.arange(6, dtype="<f4").reshape(3, 2)
    bias = np.array([[0.5, -1.0, 2.0]], dtype="<f2")
    blob = weight.tobytes() + bias.tobytes()
    xml = """<?xml version="1.0"?>
<net name="tiny" version="11">
  <layers>
    <layer id="0" name="x" type="Parameter" version="opset1">
      <data shape="1,2" element_type="f32"/>
      <output><port id="0" precision="FP32" names="x"><dim>1</dim><dim>2</dim></port></output>
    </layer>
    <layer id="1" name="W" type="Const" version="opset1">
      <data element_type="f32" shape="3, 2" offset="0" size="24"/>
      <output><port id="0" precision="FP32"><dim>3</dim><dim>2</dim></port></output>
    </layer>
    <layer id="2" name="mm" type="MatMul" version="opset1">
      <data transpose_a="false" transpose_b="true"/>
      <input><port id="0"><dim>1</dim><dim>2</dim></port><port id="1"><dim>3</dim><dim>2</dim></port></input>
      <output><port id="2" precision="FP32"><dim>1</dim><dim>3</dim></port></output>
    </layer>
    <layer id="5" name="b16" type="Const" version="opset1">
      <data element_type="f16" shape="1, 3" offset="24" size="6"/>
      <output><port id="0" precision="FP16"><dim>1</dim><dim>3</dim></port></output>
    </layer>
    <layer id="6" name="b" type="Convert" version="opset1">
      <data destination_type="f32"/>
      <input><port id="0"><dim>1</dim><dim>3</dim></port></input>
      <output><port id="1" precision="FP32"><dim>1</dim><dim>3</dim></port></output>
    </layer>
    <layer id="3" name="add" type="Add" version="opset1">
      <data auto_broadcast="numpy"/>
      <input><port id="0"><dim>1</dim><dim>3</dim></port><port id="1"><dim>1</dim><dim>3</dim></port></input>
      <output><port id="2" precision="FP32" names="y"><dim>1</dim><dim>3</dim></port></output>
    </layer>
    <layer id="4" name="y" type="Result" version="opset1">
      <input><port id="0"><dim>1</dim><dim>3</dim></port></input>
    </layer>
  </layers>
  <edges>
    <edge from-layer="0" from-port="0" to-layer="2" to-port="0"/>
    <edge from-layer="1" from-port="0" to-layer="2" to-port="1"/>
    <edge from-layer="5" from-port="0" to-layer="6" to-port="0"/>
    <edge from-layer="6" from-port="1" to-layer="3" to-port="1"/>
    <edge from-layer="2" from-port="2" to-layer="3" to-port="0"/>
    <edge from-layer="3" from-port="2" to-layer="4" to-port="0"/>
  </edges>
</net>
"""
    (folder / "tiny.xml").write_text(xml)
    (folder / "tiny.bin").write_bytes(blob[:len(blob) - truncate])
    return folder / "tiny.xml"


def test_ir_reader_reads_a_hand_written_graph(tmp_path):
    graph = msg.read_ir(_write_tiny_ir(tmp_path))
    assert graph.name == "tiny" and graph.version == "11" and len(graph) == 7
    # Topological order, whatever order the XML lists the layers in (the Add comes after its inputs).
    order = [layer.name for layer in graph]
    assert order.index("add") > max(order.index("mm"), order.index("b"))
    assert graph.summary()["Const"] == 2
    mm = graph.by_name("mm")
    assert mm.attrs == {"transpose_a": "false", "transpose_b": "true"} and mm.output_shape == (1, 3)
    np.testing.assert_array_equal(graph.const(mm, 1), np.arange(6, dtype=np.float32).reshape(3, 2))
    add = graph.by_name("add")
    assert [graph.layers[src].name for src, _ in add.sources] == ["mm", "b"]   # by port, not by edge order
    bias = graph.const(add, 1)                                                # f16 -> Convert -> f32
    assert bias.dtype == np.float32 and bias.tolist() == [[0.5, -1.0, 2.0]]
    assert [c.name for c in graph.consumers(mm)] == ["add"]
    assert graph.parameters()[0].output_shape == (1, 2) and graph.results()[0].name == "y"
    with pytest.raises(msg.IRError, match="not a constant"):
        graph.const(add, 0)


def test_ir_reader_rejects_a_truncated_bin_and_a_broken_xml(tmp_path):
    with pytest.raises(msg.IRError, match="too short.*truncated"):
        msg.read_ir(_write_tiny_ir(tmp_path, truncate=2))
    (tmp_path / "bad.xml").write_text("<net><layers><layer id='0'")
    with pytest.raises(msg.IRError, match="not a readable IR"):
        msg.read_ir(tmp_path / "bad.xml")


def test_the_real_synthesis_graph_has_the_architecture_the_modules_implement():
    graph = msg.read_ir(_data_dir() / "SynthesisNetwork.xml")
    counts = graph.summary()
    # 23 style affines; 7 IDWT upsamplings + the final one, 6 transposed 1-d convs each; 14 depthwise convs
    # with their 14 pointwise convs, + the 4-px full conv and the final 1x1 to-wavelet conv; 15 leaky ReLUs.
    assert counts["MatMul"] == 23 and counts["GroupConvolutionBackpropData"] == 48
    assert counts["GroupConvolution"] == 14 and counts["Convolution"] == 16 and counts["PReLU"] == 15
    assert graph.parameters()[0].output_shape == (1, 512) and graph.results()[0].inputs[0].shape == (1, 3, 1024, 1024)


# ---------------------------------------------------------------------------------------------- the modules
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_idwt_equals_the_reference_and_is_differentiable(channels_last):
    g = torch.Generator().manual_seed(0)
    low = torch.randn(2, 5, 6, 7, generator=g, requires_grad=True)
    high = torch.randn(2, 5, 3, 6, 7, generator=g)
    ref = msg.idwt_haar_ref(low, high)
    fast = msg.idwt_haar(low, high, channels_last=channels_last)
    assert fast.shape == (2, 5, 12, 14)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=0)
    with torch.no_grad():  # the out= path (no autograd) writes the same numbers
        torch.testing.assert_close(msg.idwt_haar(low, high, channels_last=channels_last), ref, atol=1e-6, rtol=0)
    fast.square().sum().backward()
    assert torch.isfinite(low.grad).all() and low.grad.abs().sum() > 0
    # The 2x2 average of the output is LL / 2: what resolution=512 and the half-resolution block use.
    torch.testing.assert_close(F.avg_pool2d(ref, 2), low * 0.5, atol=1e-6, rtol=0)


def test_fast_path_equals_the_reference_path_on_a_tiny_random_network():
    G = _tiny()
    assert (G.num_ws, G.img_resolution, G.resolutions) == (8, 32, (32, 16, 8))
    ws = G.mapping(torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), truncation_psi=0.8)
    ws = ws + 0.3 * torch.randn(ws.shape, generator=torch.Generator().manual_seed(2))  # unequal rows (W+)
    with torch.no_grad():
        for resolution in G.resolutions:
            fast, ref = (G.synthesis(ws, resolution=resolution, impl=impl) for impl in ("fast", "ref"))
            assert fast.shape == (3, 3, resolution, resolution) and fast.is_contiguous()
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        full = G.synthesis(ws)
        torch.testing.assert_close(G.synthesis(ws[1:2]), full[1:2], atol=1e-5, rtol=1e-5)  # batch = one by one
        torch.testing.assert_close(G.synthesis(ws, resolution=16), F.avg_pool2d(full, 2), atol=1e-5, rtol=1e-5)


def test_gradients_of_the_fast_path_equal_the_reference_path():
    """In-place steps of the fast path must not break autograd: d image / d ws equal on both paths."""
    G = _tiny()
    for batch, resolution in ((2, None), (1, None), (1, 16)):  # batch 1: the 1x1 conv's init is a view
        ws0 = G.mapping(torch.randn(batch, 16, generator=torch.Generator().manual_seed(6))).detach()
        grads = []
        for impl in ("fast", "ref"):
            ws = ws0.clone().requires_grad_(True)
            image = G.synthesis(ws, impl=impl, resolution=resolution)
            image.square().mean().backward()
            grads.append(ws.grad)
            if impl == "fast":  # the out-of-place steps under autograd draw the no-grad image exactly
                with torch.no_grad():
                    assert torch.equal(image.detach(), G.synthesis(ws0, impl=impl, resolution=resolution))
        assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
        torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_the_frozen_generators_backward_equals_autograds():
    """A frozen G (as pretrained ships it) takes the styled 1x1 conv's own backward: the same image,
    bit for bit, and the gradients autograd's product would give, to float rounding."""
    from stylerig_lite.mobilestylegan import networks

    G = _tiny(seed=2).requires_grad_(False)
    ws0 = G.mapping(torch.randn(2, 16, generator=torch.Generator().manual_seed(8))).detach()
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    calls = []
    original = networks._StyledPointwise.apply

    def counted(*args):
        calls.append(1)
        return original(*args)

    images, grads = [], []
    for use_own in (True, False):
        ws = ws0.clone().requires_grad_(True)
        with pytest.MonkeyPatch.context() as mp, contextlib.nullcontext() if use_own else networks.autograd_backward():
            mp.setattr(networks._StyledPointwise, "apply", counted)
            image = G.synthesis(ws)
            (image - target).square().mean().backward()
        images.append(image.detach())
        grads.append(ws.grad)
    styled = sum(isinstance(m, (networks.ModulatedDWConv2d, networks.MultichannelImage)) for m in G.modules())
    assert len(calls) == styled > 0  # every styled 1x1 conv took it
    assert torch.equal(images[0], images[1])
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-5)
    ws = ws0.clone().requires_grad_(True)  # and the reference path's gradient
    (G.synthesis(ws, impl="ref") - target).square().mean().backward()
    torch.testing.assert_close(grads[0], ws.grad, atol=1e-6, rtol=1e-4)


def test_every_w_of_w_plus_styles_its_own_layer():
    G = _tiny()
    ws = G.mapping(torch.randn(1, 16, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        base = G.synthesis(ws)
        for k in range(G.num_ws):
            moved = ws.clone()
            moved[:, k] += 0.5
            assert (G.synthesis(moved) - base).abs().max() > 1e-5, f"w {k} changes nothing"


def test_noise_modes():
    G = _tiny()
    ws = G.mapping(torch.randn(2, 16, generator=torch.Generator().manual_seed(4)))
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), const, atol=0, rtol=0)  # deterministic
        assert (G.synthesis(ws, noise_mode="none") - const).abs().max() > 1e-4
        draw = [G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(5)) for _ in "ab"]
        torch.testing.assert_close(draw[0], draw[1], atol=0, rtol=0)
        assert (draw[0] - const).abs().max() > 1e-4
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="sometimes")


def test_bad_latents_give_clear_errors():
    G = _tiny()
    z = torch.randn(2, 16)
    with pytest.raises(ValueError, match=r"z \(mapping input\).*expected \(\*, 16\)"):
        G.mapping(torch.randn(2, 15))
    bad = z.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"z \(mapping input\) contains 1 NaN"):
        G(bad)
    ws = G.mapping(z)
    with pytest.raises(ValueError, match=r"ws \(W\+ latents\).*expected \(\*, 8, 16\)"):
        G.synthesis(ws[:, :7])
    ws_inf = ws.clone()
    ws_inf[0, 2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"ws \(W\+ latents\) contains 1 NaN or infinite"):
        G.synthesis(ws_inf)
    with pytest.raises(ValueError, match="resolution must be one of"):
        G.synthesis(ws, resolution=12)
    with pytest.raises(ValueError, match="unconditional"):
        G.mapping(z, c=torch.ones(2, 1))
    with pytest.raises(TypeError, match="floating-point"):
        G.mapping(torch.zeros(2, 16, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- the loader
def _fake_files(folder: Path) -> dict:
    """Four small files and an IR_FILES table that matches their sizes (with wrong sha256s)."""
    table = {}
    for i, name in enumerate(msg.IR_FILES):
        (folder / name).write_bytes(bytes(range(10 + i)))
        table[name] = (10 + i, "0" * 64)
    return table


def test_missing_truncated_and_swapped_files_say_how_to_fix_them(tmp_path, monkeypatch):
    with pytest.raises(msg.FileIntegrityError, match=r"MappingNetwork\.xml is missing.*pip install --no-deps random-face"):
        msg.load_mobilestylegan(tmp_path)
    monkeypatch.setattr(msg, "IR_FILES", _fake_files(tmp_path))
    assert set(msg.check_ir_files(tmp_path, check_sha256=False)) == set(msg.IR_FILES)
    with pytest.raises(msg.FileIntegrityError, match="sha256 .* expected 0000.*corrupted or another model's"):
        msg.check_ir_files(tmp_path)
    (tmp_path / "SynthesisNetwork.bin").write_bytes(b"\0")
    with pytest.raises(msg.FileIntegrityError, match=r"SynthesisNetwork\.bin has 1 bytes, expected 13.*truncated"):
        msg.check_ir_files(tmp_path)


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(msg.FileIntegrityError, match=r"pip install --no-deps random-face==2021\.7\.21\.1"):
        msg.find_data_dir()


def test_a_graph_of_the_wrong_shape_is_refused(tmp_path):
    """The real IR into a smaller network: the loader names the mismatching tensor."""
    data = _data_dir()
    for name in msg.IR_FILES:
        (tmp_path / name).symlink_to(data / name)
    with pytest.raises(msg.IRError, match="style affines|shape"):
        msg.MobileStyleGAN(channels=(512, 512, 512, 512, 512, 256, 128)).load_from_ir(tmp_path)


# ---------------------------------------------------------------------------------------------- real weights
def test_the_registered_generator_follows_the_protocol(G):
    assert (G.z_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels) == (512, 512, 23, 1024, 3)
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    assert G.generator_sha256 == msg.combined_sha256({n: sha for n, (_, sha) in msg.IR_FILES.items()})
    z = G.sample_z(2, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 512)
    ws = G.mapping(z, None, truncation_psi=0.7)
    assert ws.shape == (2, 23, 512) and torch.equal(ws[:, 0], ws[:, 22])            # rows equal for sampled codes
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.0)[0, 0], G.w_avg)
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=4)
    assert torch.equal(cut[:, 4:], G.mapping(z)[:, 4:])
    assert G.w_avg.shape == (512,) and torch.isfinite(G.w_avg).all()


def test_parity_with_openvino_f32(G, openvino_f32):
    """Mapping to 1e-4 and the 1024-px image to 1e-3 (max abs, images in [-1, 1]) on two seeds."""
    mapping_ov, synthesis_ov = openvino_f32
    for seed in (0, 1):
        z = torch.randn(1, 512, generator=torch.Generator().manual_seed(seed))
        w_ov = mapping_ov([z.numpy()])[mapping_ov.output(0)]
        with torch.no_grad():
            ws = G.mapping(z)
            assert np.abs(ws[0, 0].numpy() - w_ov[0]).max() <= 1e-4
            img = G.synthesis(torch.from_numpy(w_ov)[:, None].repeat(1, G.num_ws, 1))
        img_ov = synthesis_ov([w_ov])[synthesis_ov.output(0)]
        assert img.shape == img_ov.shape == (1, 3, 1024, 1024)
        error = np.abs(img.numpy() - img_ov).max()
        assert error <= 1e-3, f"seed {seed}: max abs difference {error:.2e} from OpenVINO f32"


def test_the_256px_path_is_close_to_the_downsampled_image_and_differentiable(G):
    ws = G.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(7)), truncation_psi=0.7)
    with torch.no_grad():
        target = F.avg_pool2d(G.synthesis(ws), 4)
    ws = ws.clone().requires_grad_(True)
    small = G.synthesis(ws, resolution=256)
    assert small.shape == (1, 3, 256, 256)
    psnr = 10 * math.log10(4.0 / float((small.detach() - target).square().mean()))
    assert psnr > 30.0, f"PSNR {psnr:.1f} dB"
    small.square().mean().backward()
    assert torch.isfinite(ws.grad).all()
    assert (ws.grad.abs().sum(dim=2) > 0).all(), "every w of W+ should receive a gradient"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(G):
    ws = G.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(8)))
    gpu = msg.load_mobilestylegan(device="cuda")
    with torch.no_grad():
        a = G.synthesis(ws, resolution=256)
        b = gpu.synthesis(ws.cuda(), resolution=256).cpu()
    assert (a - b).abs().max() < 1e-3


def test_module_is_where_the_docs_say(tmp_path):
    """The data folder is the installed package's, and copying it elsewhere loads the same generator id."""
    data = _data_dir()
    assert data.name == "data" and data.parent.name == "random_face"
    for name in msg.IR_FILES:
        shutil.copy(data / name, tmp_path / name)
    assert msg.combined_sha256(msg.check_ir_files(tmp_path)) == msg.combined_sha256(
        {n: sha for n, (_, sha) in msg.IR_FILES.items()})
    assert msg_networks.W_AVG_SAMPLES == 10_000


@pytest.mark.slow
def test_the_photoreal_benchmark_reports_its_fields(G, openvino_f32, capsys):
    import json

    from stylerig_lite import bench

    assert bench.main(["photoreal", "--json", "--repeats", "1", "--seeds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("torch_ms_1024", "openvino_ms_1024", "ratio", "torch_ms_256", "speedup_256"):
        assert result[key] > 0, key
    assert result["parity_max_abs"] <= 1e-3 and result["psnr_256_db"] > 30


def test_generators_by_name_and_a_clear_error_for_an_unknown_one():
    from stylerig_lite import pretrained

    assert pretrained.GENERATOR_NAMES == ("faceworld", "ffhq")
    assert pretrained.generator_by_name("faceworld").img_resolution == 64
    with pytest.raises(KeyError, match=r"unknown generator 'stylegan3'; expected one of \['faceworld', 'ffhq'\]"):
        pretrained.generator_by_name("stylegan3")
