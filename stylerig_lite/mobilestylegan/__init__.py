"""MobileStyleGAN (FFHQ, 1024 px): the photoreal generator, in plain PyTorch, read from OpenVINO IR.

StyleRig rigs a pretrained, frozen, photoreal StyleGAN. MobileStyleGAN (Sergei Belousov,
"MobileStyleGAN: A Lightweight Convolutional Neural Network for High-Fidelity Image Synthesis",
2021, arXiv 2104.04767) is a StyleGAN2 *distilled* from NVIDIA's StyleGAN2 trained on FFHQ: the
same mapping network z -> w (512-d), and a synthesis network of modulated depthwise-separable
convolutions that builds each resolution by an inverse Haar wavelet transform (IDWT), 4 px to
512 px features, then 12 wavelet channels -> a 1024-px RGB image. Its weights ship, as OpenVINO
IR, inside the PyPI package ``random-face`` (by the same author)::

    pip install --no-deps random-face==2021.7.21.1

(``--no-deps``: its declared dependencies -- opencv, openvino, jupyter, gdown, blessed -- are not
needed to read the files; ``openvino`` is only the reference the parity tests compare against.)

Licences: the code of ``random-face`` is Apache-2.0; the weights are derived from FFHQ-trained
StyleGAN2 (FFHQ: CC BY-NC-SA 4.0 as a dataset, StyleGAN2: NVIDIA Source Code License, non-
commercial), so treat them as *non-commercial*. They are fetched by pip and never committed here.

Split the way NVlabs split a model (and :mod:`~stylerig_lite.stylegan2` does):

* :mod:`~stylerig_lite.mobilestylegan.ir` -- a small reader of OpenVINO IR (``.xml`` graph with
  ``xml.etree``, ``.bin`` constants with ``numpy.frombuffer``), no OpenVINO needed;
* :mod:`~stylerig_lite.mobilestylegan.networks` -- the modules (:class:`MobileStyleGAN`,
  ``MappingNetwork``, ``SynthesisNetwork``, ``MobileSynthesisBlock``, ``ModulatedDWConv2d``,
  ``IDWTUpsample``, ...) with the author's module names, and the loader that walks the IR graphs
  into them, checking every shape.

:func:`load_mobilestylegan` finds the files (``random_face/data`` of the installed package, found
with importlib without importing it), checks their sizes and sha256 against the published wheel's,
loads them, computes the truncation centre ``w_avg`` (mean w over 10,000 seeded z, see
:data:`~stylerig_lite.mobilestylegan.networks.W_AVG_SAMPLES`) and returns the generator in eval
mode. It follows the package's generator protocol (``z_dim``, ``w_dim``, ``num_ws = 23``,
``img_resolution = 1024``, ``mapping``, ``synthesis``, ``sample_z``), so the corpus, RigNet and the
editor use it like the FaceWorld StyleGAN2; ``G.generator_sha256`` names the IR files it came from,
so a RigNet can be bound to it. ``pretrained.photoreal_generator()`` is the frozen one.

Measured on this project's 2-core CPU machine: parity with OpenVINO f32 to about 1e-4 max abs on
[-1, 1] images (mapping 5e-6); one 1024-px image in 215 ms with 2 threads (OpenVINO f32: 221 ms),
256 px in 91 ms (``python -m stylerig_lite.bench photoreal``; details in
:mod:`~stylerig_lite.mobilestylegan.networks`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..io_utils import sha256_file
from .ir import ELEMENT_TYPES, IRError, IRGraph, IRLayer, IRPort, read_ir
from .networks import (CHANNELS, HAAR_TAP, SUPPORTED_RESOLUTIONS, W_AVG_SAMPLES, W_AVG_SEED, FileIntegrityError,
                       IDWTUpsample, MappingNetwork, MobileStyleGAN, MobileSynthesisBlock, ModulatedConv2d,
                       ModulatedDWConv2d, MultichannelImage, NoiseInjection, StyledConv2d, SynthesisNetwork, idwt_haar,
                       idwt_haar_bands, idwt_haar_ref)

__all__ = [
    "CHANNELS",
    "ELEMENT_TYPES",
    "FileIntegrityError",
    "HAAR_TAP",
    "IDWTUpsample",
    "IR_FILES",
    "IRError",
    "IRGraph",
    "IRLayer",
    "IRPort",
    "MappingNetwork",
    "MobileStyleGAN",
    "MobileSynthesisBlock",
    "ModulatedConv2d",
    "ModulatedDWConv2d",
    "MultichannelImage",
    "NoiseInjection",
    "PACKAGE",
    "PIP_INSTALL",
    "StyledConv2d",
    "SUPPORTED_RESOLUTIONS",
    "SynthesisNetwork",
    "W_AVG_SAMPLES",
    "W_AVG_SEED",
    "check_ir_files",
    "combined_sha256",
    "find_data_dir",
    "idwt_haar",
    "idwt_haar_bands",
    "idwt_haar_ref",
    "load_mobilestylegan",
    "read_ir",
]

#: The PyPI release that ships the weights, and how to install it.
PACKAGE = "random-face==2021.7.21.1"
PIP_INSTALL = f"pip install --no-deps {PACKAGE}"

#: File name -> (size in bytes, sha256) of the IR files in ``random_face/data`` of that release.
IR_FILES: Dict[str, tuple] = {
    "MappingNetwork.xml": (59_865, "73e2096cad6e696e4af47df2477e048ab4c42c0e0dec83c7c66604822689e55b"),
    "MappingNetwork.bin": (8_405_040, "212dd716bdb556e18db603ea97300d4fa3c872b878c726b2402fea80820e7305"),
    "SynthesisNetwork.xml": (425_183, "7918fce515243954d3e06628cb39a23902d6b1d5d02932cc0c2faee7a2aeeedd"),
    "SynthesisNetwork.bin": (32_025_440, "c7da15fa22d508c82e1c30dd6b4cdf67fe3ccdddaf85b310ee764dbf0c289645"),
}


def find_data_dir() -> Path:
    """``random_face/data`` of the installed ``random-face`` package (located, not imported).

    Importing ``random_face`` would import OpenCV and OpenVINO; ``importlib.util.find_spec`` only
    finds its folder. Raises :class:`FileIntegrityError` with the install command when it is missing.
    """
    try:
        spec = importlib.util.find_spec("random_face")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileIntegrityError(
            f"the photoreal generator needs the MobileStyleGAN weights from the PyPI package random-face, "
            f"which is not installed: run `{PIP_INSTALL}` (or pass data_dir= a folder holding "
            f"{', '.join(IR_FILES)})")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def combined_sha256(file_sha256: Dict[str, str]) -> str:
    """One sha256 naming the generator: of the lines ``name sha256`` of its IR files, sorted by name."""
    text = "".join(f"{name} {sha}\n" for name, sha in sorted(file_sha256.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def check_ir_files(data_dir: Union[str, os.PathLike], check_sha256: bool = True) -> Dict[str, str]:
    """Check the four IR files in ``data_dir``: present, of the published size and sha256.

    Returns ``{file name: sha256}``. With ``check_sha256=False`` (files of another export you
    trust) only their presence is checked and the values are empty strings; :func:`read_ir` still
    refuses a ``.bin`` too short for its ``.xml``. A missing,
    truncated, corrupted or swapped file raises :class:`FileIntegrityError` naming the file, what
    was expected and the install command.
    """
    data_dir = Path(data_dir)
    for name, (size, _) in IR_FILES.items():  # sizes first: cheap, and a truncated file is named as such
        path = data_dir / name
        if not path.is_file():
            raise FileIntegrityError(f"{path} is missing: the photoreal generator needs the four MobileStyleGAN IR "
                                     f"files ({', '.join(IR_FILES)}); reinstall them with `{PIP_INSTALL}`")
        actual = path.stat().st_size
        if check_sha256 and actual != size:
            what = "truncated (an interrupted download?)" if actual < size else "larger than the published file"
            raise FileIntegrityError(f"{path} has {actual:,} bytes, expected {size:,}: the file is {what}; "
                                     f"reinstall it with `{PIP_INSTALL} --force-reinstall`")
    hashes: Dict[str, str] = {}
    for name, (_, sha) in IR_FILES.items():
        path = data_dir / name
        if check_sha256:
            digest = sha256_file(path)
            if digest != sha:
                raise FileIntegrityError(
                    f"{path} has sha256 {digest[:16]}..., expected {sha[:16]}... ({PACKAGE}): the file is corrupted "
                    f"or another model's; reinstall it with `{PIP_INSTALL} --force-reinstall`, or pass "
                    f"check_sha256=False to load a file you trust")
            hashes[name] = digest
        else:
            hashes[name] = ""
    return hashes


def load_mobilestylegan(data_dir: Optional[Union[str, os.PathLike]] = None,
                        device: Union[str, torch.device, None] = None, check_sha256: bool = True) -> MobileStyleGAN:
    """The photoreal generator, in eval mode, with the weights of ``data_dir`` (default: :func:`find_data_dir`).

    Checks the files (:func:`check_ir_files`), reads both IR graphs into :class:`MobileStyleGAN`
    (every shape checked), computes ``w_avg`` and sets ``G.file_sha256`` and ``G.generator_sha256``
    (:func:`combined_sha256`; None when ``check_sha256`` is False). About 2 s on the CPU.
    ``device``: where to put it (``'cuda'`` on a GPU machine).
    """
    data_dir = find_data_dir() if data_dir is None else Path(data_dir)
    hashes = check_ir_files(data_dir, check_sha256=check_sha256)
    G = MobileStyleGAN()
    if device is not None:
        G = G.to(device)
    G.load_from_ir(data_dir)
    G.file_sha256 = hashes if check_sha256 else {}
    G.generator_sha256 = combined_sha256(hashes) if check_sha256 else None
    return G.eval()
