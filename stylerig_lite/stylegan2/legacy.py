"""Official NVlabs stylegan2-ada-pytorch pickles, read WITHOUT executing anything from them.

The counterpart of NVlabs' ``legacy.py``: :func:`load_official_pickle` turns the ``G_ema`` of an
official snapshot (``stylegan2-ffhq-config-f.pkl`` ...) into our
:class:`~stylerig_lite.stylegan2.networks.Generator`, whose modules, parameters and buffers carry
the official names, so the weights copy over with ``load_state_dict(strict=True)``.
:func:`read_official_pickle` is the safe unpickling step on its own (network objects come back as
:class:`PersistentRecord` s) and :func:`config_from_official_kwargs` translates the official
``Generator(**init_kwargs)`` into a :class:`~stylerig_lite.stylegan2.networks.StyleGAN2Config`.
Anything else (TensorFlow pickles, StyleGAN3, unknown classes) raises :class:`OfficialPickleError`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..io_utils import load_checkpoint_file
from .networks import Generator, StyleGAN2Config

__all__ = [
    "OfficialPickleError",
    "EasyDictStub",
    "PersistentRecord",
    "read_official_pickle",
    "config_from_official_kwargs",
    "load_official_pickle",
]


# ----------------------------------------------------------------------------------------------
# How a snapshot is read.
#
# An official snapshot is ``pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
# training_set_kwargs=...))``. Each network object is a "persistent class" instance that pickles as
# ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` holds the *full
# source code* of training/networks.py (``module_src``), the class name and the object's
# ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...). A plain
# ``pickle.load`` would ``exec`` that source: arbitrary code from a downloaded file. Instead we
# allow only a whitelist of harmless reconstructors, capture ``meta`` as data, and copy the
# tensors into our own classes, which use the official names.


class OfficialPickleError(ValueError):
    """The file is not an official StyleGAN2-ADA pickle (or holds something we refuse to load)."""


class EasyDictStub(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access) when unpickling."""


@dataclasses.dataclass
class PersistentRecord:
    """A captured persistent object: its class name and state. ``module_src`` is kept as text only."""

    class_name: str
    state: dict
    version: int
    module_src_sha256: str

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


def _capture_persistent_obj(meta: Any) -> PersistentRecord:
    """Replacement for ``_reconstruct_persistent_obj``: record, never exec ``meta['module_src']``."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: malformed persistent-object record")
    src = meta.get("module_src")
    digest = hashlib.sha256(src.encode("utf-8", "replace")).hexdigest() if isinstance(src, str) else ""
    state = meta.get("state")
    if not isinstance(state, dict):
        raise OfficialPickleError(f"not an official StyleGAN2-ADA pickle: {meta['class_name']} has no state dict")
    return PersistentRecord(meta["class_name"], state, int(meta.get("version", -1)), digest)


def _safe_storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` (a nested legacy ``torch.save``), read with weights_only."""
    if not isinstance(data, (bytes, bytearray)):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: storage payload is not bytes")
    return load_checkpoint_file(io.BytesIO(bytes(data)), "tensor storage inside an official pickle")


def _is_storage(obj: Any) -> bool:
    return isinstance(obj, (torch.TypedStorage, torch.UntypedStorage))


def _safe_rebuild_tensor_v2(storage, *args):
    if not _is_storage(storage):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: tensor without a storage")
    return torch._utils._rebuild_tensor_v2(storage, *args)


def _safe_rebuild_tensor(storage, *args):
    if not _is_storage(storage):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: tensor without a storage")
    return torch._utils._rebuild_tensor(storage, *args)


def _safe_rebuild_parameter(data, requires_grad, backward_hooks, *state):
    if not isinstance(data, torch.Tensor):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: parameter without a tensor")
    # Drop any extra Python state (attributes set on the Parameter): we only need the numbers.
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_allowed() -> dict[tuple[str, str], Any]:
    """numpy scalars/arrays (e.g. the float64 ``weight_gain`` attributes) pickle via these helpers."""
    try:  # numpy >= 2 moved multiarray to numpy._core; numpy.core is a deprecated alias there.
        from numpy._core import multiarray as _ma  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as _ma  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "scalar")] = _ma.scalar
        allowed[(mod, "_reconstruct")] = _ma._reconstruct
    return allowed


class _OfficialUnpickler(pickle.Unpickler):
    """Unpickler that resolves only a fixed whitelist of globals; everything else is refused."""

    _allowed: dict[tuple[str, str], Any] | None = None

    @classmethod
    def allowed(cls) -> dict[tuple[str, str], Any]:
        if cls._allowed is None:
            table: dict[tuple[str, str], Any] = {
                ("torch_utils.persistence", "_reconstruct_persistent_obj"): _capture_persistent_obj,
                ("dnnlib.util", "EasyDict"): EasyDictStub,
                ("dnnlib", "EasyDict"): EasyDictStub,
                ("collections", "OrderedDict"): collections.OrderedDict,
                ("builtins", "set"): set,
                ("builtins", "frozenset"): frozenset,
                ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor_v2,
                ("torch._utils", "_rebuild_tensor"): _safe_rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _safe_rebuild_parameter,
                ("torch._utils", "_rebuild_parameter_with_state"): _safe_rebuild_parameter,
                ("torch.storage", "_load_from_bytes"): _safe_storage_from_bytes,
            }
            table.update(_numpy_allowed())
            cls._allowed = table
        return cls._allowed

    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed().get((module, name))
        if target is None:
            hint = ""
            if module.startswith("dnnlib.tflib"):
                hint = " (a TensorFlow StyleGAN2 pickle: convert it with NVlabs' legacy.py first)"
            raise OfficialPickleError(f"not an official StyleGAN2-ADA pickle: found class {module}.{name}{hint}; "
                                      f"refusing to load it")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: unexpected persistent id "
                                  "(a torch.save file? use load_generator)")


def read_official_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle an official snapshot into plain data: ``{'G_ema': PersistentRecord, ...}``.

    No code from the file runs: network objects come back as :class:`PersistentRecord` s.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no official StyleGAN2-ADA pickle at {path}")
    with open(path, "rb") as f:
        try:
            data = _OfficialUnpickler(f).load()
        except OfficialPickleError:
            raise
        except Exception as exc:
            raise OfficialPickleError(f"{path} is not a readable StyleGAN2-ADA pickle: "
                                      f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise OfficialPickleError(f"{path}: not an official StyleGAN2-ADA pickle: top level is "
                                  f"{type(data).__name__}, expected a dict with 'G_ema'")
    return data


_OFFICIAL_G_CLASSES = {"Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
                       "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer"}


def config_from_official_kwargs(init_kwargs: Mapping[str, Any], name: str = "official") -> StyleGAN2Config:
    """Translate an official ``Generator(**init_kwargs)`` into a :class:`StyleGAN2Config`."""
    kw = dict(init_kwargs)
    mapping = dict(kw.pop("mapping_kwargs", {}) or {})
    synthesis = dict(kw.pop("synthesis_kwargs", {}) or {})
    try:
        z_dim, c_dim, w_dim = int(kw.pop("z_dim")), int(kw.pop("c_dim")), int(kw.pop("w_dim"))
        res, channels = int(kw.pop("img_resolution")), int(kw.pop("img_channels"))
    except KeyError as exc:
        raise OfficialPickleError(f"official Generator kwargs lack {exc}; got {sorted(init_kwargs)}") from exc
    unsupported = []
    for key, value in kw.items():
        if key != "epochs":  # some forks add an epoch counter; harmless
            unsupported.append(f"{key}={value!r}")
    for key in ("embed_features", "layer_features"):
        if mapping.pop(key, None) is not None:
            unsupported.append(f"mapping_kwargs.{key}")
    if mapping.pop("activation", "lrelu") != "lrelu":
        unsupported.append("mapping_kwargs.activation")
    if synthesis.pop("activation", "lrelu") != "lrelu":  # legacy.py (TF conversions) spells it out
        unsupported.append("synthesis_kwargs.activation")
    if list(synthesis.pop("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        unsupported.append("synthesis_kwargs.resample_filter")
    for key in ("channels_last", "fp16_channels_last"):
        synthesis.pop(key, None)  # memory layout only
    cfg = dict(
        name=name, img_resolution=res, img_channels=channels, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim,
        mapping_layers=int(mapping.pop("num_layers", 8)),
        mapping_lr_multiplier=float(mapping.pop("lr_multiplier", 0.01)),
        w_avg_beta=mapping.pop("w_avg_beta", 0.995),
        channel_base=int(synthesis.pop("channel_base", 32768)),
        channel_max=int(synthesis.pop("channel_max", 512)),
        num_fp16_res=int(synthesis.pop("num_fp16_res", 0)),
        conv_clamp=synthesis.pop("conv_clamp", None),
        architecture=synthesis.pop("architecture", "skip"),
        use_noise=bool(synthesis.pop("use_noise", True)),
        fused_modconv=True,
    )
    if cfg["w_avg_beta"] is None:
        unsupported.append("mapping_kwargs.w_avg_beta=None")
    unsupported += [f"mapping_kwargs.{k}" for k in mapping] + [f"synthesis_kwargs.{k}" for k in synthesis]
    if unsupported:
        raise OfficialPickleError(f"official Generator options not supported here: {unsupported}")
    if cfg["conv_clamp"] is not None:
        cfg["conv_clamp"] = float(cfg["conv_clamp"])
    cfg["d_channel_base"], cfg["d_channel_max"] = cfg["channel_base"], cfg["channel_max"]
    return StyleGAN2Config(**cfg)


def _official_state_dict(record: PersistentRecord, prefix: str, out: dict[str, torch.Tensor],
                         classes: set[str]) -> None:
    classes.add(record.class_name)
    state = record.state
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise OfficialPickleError(f"not an official StyleGAN2-ADA pickle: submodule {prefix + name} is "
                                      f"{type(child).__name__}")
        _official_state_dict(child, f"{prefix}{name}.", out, classes)


def load_official_pickle(path: str | os.PathLike, which: str = "G_ema") -> Generator:
    """Load the generator of an official NVlabs stylegan2-ada-pytorch ``.pkl`` without running its code.

    Builds our :class:`Generator` from the pickled ``init_kwargs`` and copies parameters and
    buffers by their (identical) names with ``load_state_dict(strict=True)``. Returned in eval mode
    with gradients off and ``fused_modconv=True`` (the official inference default).
    """
    path = Path(path)
    data = read_official_pickle(path)
    record = data.get(which)
    if not isinstance(record, PersistentRecord):
        raise OfficialPickleError(f"{path}: not an official StyleGAN2-ADA pickle: no persistent network "
                                  f"{which!r} (keys: {sorted(map(str, data))})")
    if record.class_name != "Generator":
        raise OfficialPickleError(f"{path}: {which} is a {record.class_name}, expected a Generator")
    config = config_from_official_kwargs(record.init_kwargs, name=f"official:{path.name}")
    state: dict[str, torch.Tensor] = {}
    classes: set[str] = set()
    _official_state_dict(record, "", state, classes)
    foreign = sorted(classes - _OFFICIAL_G_CLASSES)
    if foreign:
        raise OfficialPickleError(f"{path}: generator uses classes this StyleGAN2 cannot load: {foreign} "
                                  f"(StyleGAN3 / other forks are not supported)")
    G = Generator(config)
    missing, unexpected = [], []
    own = G.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad_shape:
        raise OfficialPickleError(f"{path}: official weights do not map onto our Generator: missing {missing[:8]}, "
                                  f"unexpected {unexpected[:8]}, shape mismatch {bad_shape[:8]}")
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return G.eval().requires_grad_(False)
