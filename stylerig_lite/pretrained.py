"""The embedded default world's trained networks, committed in ``stylerig_lite/weights``.

Every file there is listed in ``weights/manifest.json`` with its sha256, the command and seed
that made it, and the metrics measured on it. The loaders here verify the hash before reading, so
a truncated or edited file gives a clear error instead of a silently wrong network::

    G = pretrained.generator()                 # FaceWorld StyleGAN2, G_ema, eval mode, frozen
    F = pretrained.face_estimator()            # F, the reconstruction network RigNet trains with
    E = pretrained.evaluation_estimator()      # the independent judge of every control number
    R = pretrained.rignet("pose")              # a RigNet: R.rig(w, p_target) -> edited W+ latents

Each loader also takes an explicit ``path`` (your own checkpoint; no hash check then).
:func:`export` turns a training checkpoint into a small fp16 file and records it in the manifest.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .io_utils import atomic_torch_save, atomic_write_json, load_checkpoint_file, module_sha256, sha256_file
from .params import RIG_COMPONENTS, rig_component

__all__ = [
    "CALIBRATION_FILE",
    "check_rignet_generator",
    "DATA_DIR",
    "EMBEDDED",
    "embedded_generator_sha256",
    "embedded_path",
    "evaluation_estimator",
    "export",
    "face_estimator",
    "generator",
    "generator_by_name",
    "GENERATOR_NAMES",
    "latent_f",
    "MANIFEST",
    "photo_encoder",
    "photoreal_generator",
    "PHOTOREAL_RIGS",
    "read_manifest",
    "rig_calibration",
    "rignet",
    "sha256_of",
    "training_log",
    "WEIGHTS_DIR",
    "WeightsError",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DATA_DIR = Path(__file__).resolve().parent / "data"  # shipped measurements (calibrations, evaluations)
MANIFEST = WEIGHTS_DIR / "manifest.json"

#: name -> (file name, kind) of every embedded network.
EMBEDDED = {
    "generator": ("faceworld_stylegan2.pt", "stylegan2"),
    "face_estimator": ("face_estimator.pt", "reconstruction"),
    "evaluation_estimator": ("evaluation_estimator.pt", "reconstruction"),
    # One RigNet per controlled component: rignet_pose, rignet_expression, rignet_light.
    **{f"rignet_{component}": (f"rignet_{component}.pt", "rignet") for component in RIG_COMPONENTS},
    # The latent F (W+ -> 3DMM parameters) of each generator: latent_f_faceworld, latent_f_ffhq.
    "latent_f_faceworld": ("latent_f_faceworld.pt", "latent_f"),
    "latent_f_ffhq": ("latent_f_ffhq.pt", "latent_f"),
    # The photoreal generator's RigNets: rignet_ffhq_pose, rignet_ffhq_expression, rignet_ffhq_light (PHOTOREAL_RIGS).
    **{f"rignet_ffhq_{component}": (f"rignet_ffhq_{component}.pt", "rignet") for component in RIG_COMPONENTS},
    # The photo encoder of the photoreal generator (aligned crop -> first guess of w; stylerig_lite.encoder).
    "photo_encoder_ffhq": ("photo_encoder_ffhq.pt", "encoder"),
}

#: The components with an embedded photoreal RigNet. The pose RigNet is the one chosen on the validation split
#: (first 7 W+ rows, w_rec 300: the paper's weights broke the image in about half of the edits; chapter 5,
#: section 11). As trained it turned heads by 0.82 of the asked yaw and 1.44 of the asked pitch (the judge, 500
#: pairs); :func:`rignet` returns it with its slider calibration set (:func:`rig_calibration`).
PHOTOREAL_RIGS = ("pose", "expression", "light")


class WeightsError(RuntimeError):
    """An embedded weights file is missing, corrupt, or not listed in the manifest."""


def read_manifest() -> Dict[str, Any]:
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text())


#: Hex sha256 of a file; kept for compatibility, the one implementation is :func:`~stylerig_lite.io_utils.sha256_file`.
sha256_of = sha256_file


def embedded_path(name: str) -> Path:
    """Path of an embedded network after checking it exists and matches the manifest's sha256."""
    if name not in EMBEDDED:
        raise KeyError(f"unknown embedded network {name!r}; expected one of {sorted(EMBEDDED)}")
    path = WEIGHTS_DIR / EMBEDDED[name][0]
    entry = read_manifest().get(name)
    if not path.is_file() or entry is None:
        raise WeightsError(
            f"the embedded {name} ({path}) is missing or not in {MANIFEST.name}; reinstall the package "
            f"(pip install -e .) or pass path= to load your own checkpoint"
        )
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise WeightsError(
            f"{path} is corrupt: sha256 {actual[:16]}... differs from the manifest's {entry['sha256'][:16]}...; "
            f"restore it with `git checkout -- {path.relative_to(WEIGHTS_DIR.parent.parent)}`"
        )
    return path


def generator(path: Optional[Union[str, os.PathLike]] = None):
    """The FaceWorld StyleGAN2 (``G_ema``), in eval mode with gradients off.

    A checkpoint holding its G_ema by reference (a slim resume checkpoint) finds it beside itself
    or among the embedded weights.
    """
    from .stylegan2 import load_generator

    return load_generator(path if path is not None else embedded_path("generator"), search_dirs=[WEIGHTS_DIR])


def photoreal_generator(data_dir: Optional[Union[str, os.PathLike]] = None, device=None):
    """The photoreal MobileStyleGAN (FFHQ, 1024 px, 23 x 512 W+), in eval mode with gradients off.

    Not embedded: its weights come from the PyPI package ``random-face`` (non-commercial, never
    committed; install with ``pip install --no-deps random-face==2021.7.21.1``) and are checked
    against their published sha256; ``G.generator_sha256`` names them. ``data_dir``: another folder
    holding the four IR files. See :mod:`~stylerig_lite.mobilestylegan`.
    """
    from .mobilestylegan import load_mobilestylegan

    G = load_mobilestylegan(data_dir, device=device)
    G.requires_grad_(False)
    return G


#: The generators the book rigs, by name: FaceWorld's StyleGAN2 (embedded) and the photoreal MobileStyleGAN.
GENERATOR_NAMES = ("faceworld", "ffhq")


def generator_by_name(name: str, device=None):
    """``'faceworld'`` (:func:`generator`) or ``'ffhq'`` (:func:`photoreal_generator`); another name is a ``KeyError``."""
    if name == "faceworld":
        G = generator()
        return G.to(device) if device is not None else G
    if name == "ffhq":
        return photoreal_generator(device=device)
    raise KeyError(f"unknown generator {name!r}; expected one of {list(GENERATOR_NAMES)} "
                   "(or load a checkpoint with pretrained.generator(path))")


def face_estimator(path: Optional[Union[str, os.PathLike]] = None):
    """F: image -> 3DMM parameters and landmarks, in eval mode with gradients off."""
    from .reconstruction import ReconstructionNet

    return ReconstructionNet.load(path if path is not None else embedded_path("face_estimator"))


def evaluation_estimator(path: Optional[Union[str, os.PathLike]] = None):
    """The evaluation estimator (another seed and width than F, same data), eval mode, frozen."""
    from .reconstruction import ReconstructionNet

    return ReconstructionNet.load(path if path is not None else embedded_path("evaluation_estimator"))


def rignet(component: str, path: Optional[Union[str, os.PathLike]] = None, generator: str = "faceworld"):
    """The RigNet for ``component`` ('pose', 'expression', 'light'; 'illumination' is an alias), eval mode, frozen.

    ``generator``: ``'faceworld'`` (default) or ``'ffhq'``, the photoreal generator's RigNets (trained through its
    latent F).

    An embedded RigNet knows the generator it was trained on from the manifest (the file sha256 of the
    embedded generator; its network's hash is computed when first checked), so that
    ``R.check_generator(G)`` refuses another generator; a checkpoint of yours carries the record
    ``train-rignet`` wrote into it.
    """
    from .rignet import RigNet

    component = rig_component(component)  # a clear KeyError for a misspelt component, before any file lookup
    if generator not in GENERATOR_NAMES:
        raise KeyError(f"unknown generator {generator!r}; expected one of {list(GENERATOR_NAMES)}")
    if path is not None:
        return RigNet.load(path)
    if generator == "ffhq":  # the photoreal generator's RigNets carry their generator's record in the file
        if component not in PHOTOREAL_RIGS:
            raise KeyError(f"no embedded photoreal {component} RigNet: the trained ones failed their validation "
                           f"(chapter 5, section 11); the photoreal RigNets are {list(PHOTOREAL_RIGS)}. Train one with "
                           f"`stylerig-lite train-rignet --generator ffhq --component {component} --corpus DIR` and "
                           "pass path=")
        net = RigNet.load(embedded_path(f"rignet_ffhq_{component}"))
        calibration = rig_calibration(component)
        return net if calibration is None else net.set_request_gain(calibration["request_gain"])
    name = f"rignet_{component}"
    net = RigNet.load(embedded_path(name))
    check_rignet_generator(name)
    if net.generator_sha256 is None:  # the committed files predate the record: it comes from the manifest
        file_sha = read_manifest().get(name, {}).get("generator_sha256")
        if file_sha is not None:
            net.record_generator(file_sha256=file_sha, sha256_from=functools.partial(embedded_generator_sha256, file_sha))
    return net


#: The shipped slider calibration of a photoreal RigNet (``training/pose_calibration.py``), per component.
CALIBRATION_FILE = "photoreal_{component}_calibration.json"


def rig_calibration(component: str) -> Optional[Dict[str, Any]]:
    """The slider calibration of the embedded photoreal ``component`` RigNet, or None if it has none.

    ``request_gain``: one factor per component parameter (:meth:`~stylerig_lite.rignet.RigNet.set_request_gain`),
    measured for the embedded file named by ``rignet_sha256``; a calibration of another file is refused.
    """
    path = DATA_DIR / CALIBRATION_FILE.format(component=rig_component(component))
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    expected = read_manifest().get(f"rignet_ffhq_{component}", {}).get("sha256")
    if data.get("rignet_sha256") != expected:
        raise WeightsError(f"{path.name} calibrates the RigNet file with sha256 {data.get('rignet_sha256')}, but the "
                           f"embedded rignet_ffhq_{component} has {expected}: measure it again with "
                           "`python training/pose_calibration.py --write`")
    return data


def latent_f(generator: str = "faceworld", path: Optional[Union[str, os.PathLike]] = None):
    """The latent F of a generator (``'faceworld'`` or ``'ffhq'``): W+ -> 3DMM parameters, eval mode, frozen.

    It records the generator it was trained on; ``F.check_generator(G)`` refuses another's.
    """
    from .latent_f import LatentF

    if generator not in GENERATOR_NAMES:
        raise KeyError(f"unknown generator {generator!r}; expected one of {list(GENERATOR_NAMES)}")
    return LatentF.load(path if path is not None else embedded_path(f"latent_f_{generator}"))


def photo_encoder(path: Optional[Union[str, os.PathLike]] = None):
    """The photoreal generator's photo encoder (:mod:`stylerig_lite.encoder`), eval mode, frozen."""
    from .encoder import PhotoEncoder

    return PhotoEncoder.load(path if path is not None else embedded_path("photo_encoder_ffhq"))


@functools.lru_cache(maxsize=4)
def embedded_generator_sha256(file_sha256: Optional[str] = None) -> str:
    """:func:`~stylerig_lite.io_utils.module_sha256` of the embedded generator (loaded once, then cached).

    ``file_sha256``: the file hash the caller expects the embedded generator to have (a RigNet's
    record); a :class:`WeightsError` if it has another.
    """
    path = embedded_path("generator")
    actual = read_manifest()["generator"]["sha256"]
    if file_sha256 is not None and file_sha256 != actual:
        raise WeightsError(f"the embedded generator has sha256 {actual[:12]}..., not {file_sha256[:12]}...")
    return module_sha256(generator(path))


def check_rignet_generator(name: str) -> None:
    """Refuse an embedded RigNet trained on another generator than the embedded one.

    A RigNet's edits are offsets in one generator's W+ space; on another generator (say, the
    FaceWorld GAN after more training) they move the latent somewhere meaningless.
    """
    manifest = read_manifest()
    trained_on = manifest.get(name, {}).get("generator_sha256")
    current = manifest.get("generator", {}).get("sha256")
    if trained_on is not None and trained_on != current:
        raise WeightsError(
            f"the embedded {name} was trained on the generator with sha256 {trained_on[:12]}..., but the embedded "
            f"generator is {str(current)[:12]}...; retrain it on this generator (training/README.md) "
            f"or pass path= and your own generator")


def _half(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.half()
    if isinstance(obj, dict):
        return {k: _half(v) for k, v in obj.items()}
    return obj


def _log_path(name: str) -> Path:
    return WEIGHTS_DIR / "logs" / f"{name}.json"


def _export_training_log(name: str, train: Dict[str, Any], command: str) -> Dict[str, Any]:
    """Ship a RigNet run's loss history beside its weights (``weights/logs/<name>.json``, a few kB).

    The book plots these curves in every mode (a quick run only demonstrates). Returns the
    manifest fields that point at the log (none when the checkpoint holds no history). ``train``: the
    training checkpoint's ``train`` entry (config and history).
    """
    history = train.get("history") or []
    if not history:
        return {}
    path = _log_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = [{k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in entry.items()} for entry in history]
    atomic_write_json(path, {"name": name, "command": command, "config": train.get("config", {}), "history": rounded})
    return {"training_log": f"logs/{path.name}", "training_log_sha256": sha256_file(path)}


def training_log(name: str) -> Dict[str, Any]:
    """The shipped training log of embedded network ``name``: ``{'command', 'config', 'history': [...]}``.

    ``history`` holds one entry per logged step (``step``, ``elapsed_s`` and the mean of every
    loss term since the previous entry), as ``stylerig-lite train-rignet`` wrote it. Raises
    :class:`WeightsError` when the network was exported without one (exports before the logs were
    shipped) or the file does not match the manifest's sha256.
    """
    entry = read_manifest().get(name)
    if entry is None:
        raise KeyError(f"unknown embedded network {name!r}; expected one of {sorted(EMBEDDED)}")
    if "training_log" not in entry:
        raise WeightsError(f"{name} was embedded without its training log; re-run its command to make one: "
                           f"{entry.get('command', '(no command recorded)')}")
    path = WEIGHTS_DIR / entry["training_log"]
    if not path.is_file():
        raise WeightsError(f"{name}'s training log {path} is missing; reinstall the package")
    if sha256_file(path) != entry.get("training_log_sha256"):
        raise WeightsError(f"{name}'s training log {path} is corrupt (sha256 differs from the manifest's); "
                           "reinstall the package")
    return json.loads(path.read_text())


def export(name: str, checkpoint: Union[str, os.PathLike], *, command: str, seed: int,
           metrics: Optional[Dict[str, Any]] = None, notes: str = "") -> Path:
    """Write the small fp16 embedded file for ``name`` from a training checkpoint and record it.

    For the generator only ``G_ema`` (and the config) is kept; for an estimator, the network
    without its optimizer state. The normalisation buffers of an estimator stay float32.
    """
    from .reconstruction import ReconstructionNet
    from .stylegan2 import load_checkpoint, load_generator, save_generator_only

    if name not in EMBEDDED:
        raise KeyError(f"unknown embedded network {name!r}; expected one of {sorted(EMBEDDED)}")
    out = WEIGHTS_DIR / EMBEDDED[name][0]
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    if EMBEDDED[name][1] == "stylegan2":
        payload = load_checkpoint(checkpoint)
        save_generator_only(out, load_generator(checkpoint, search_dirs=[WEIGHTS_DIR]), step=payload["step"],
                            images_seen=payload["images_seen"])
        extra = {"images_seen": int(payload["images_seen"])}
    elif EMBEDDED[name][1] == "latent_f":
        from .latent_f import LatentF

        net = LatentF.load(checkpoint)
        net.save(out, half=True)
        # The network's own record (the generator's module sha256 and file sha256) travels in the file too.
        extra = {"generator_module_sha256": net.generator_sha256, "generator_file_sha256": net.generator_file_sha256}
    elif EMBEDDED[name][1] == "encoder":
        from .encoder import PhotoEncoder

        net = PhotoEncoder.load(checkpoint)
        net.save(out, half=True)
        extra = {"generator_module_sha256": net.generator_sha256, "generator_file_sha256": net.generator_file_sha256}
    elif EMBEDDED[name][1] == "rignet":
        from .rignet import RigNet

        data = RigNet.load(checkpoint).checkpoint()  # drops the optimizer state and history
        # The normalisation buffers stay float32 (like an estimator's).
        data["state_dict"] = {k: (v if k in ("param_mean", "param_std") else _half(v)) for k, v in data["state_dict"].items()}
        # The generator it was trained on (its own --generator, else the embedded one at export time).
        train = load_checkpoint_file(checkpoint, "RigNet checkpoint").get("train") or {}
        trained_with = train.get("config", {})
        atomic_torch_save(data, out)
        extra_log = _export_training_log(name, train, command)
        if trained_with.get("generator") == "ffhq":  # no file of ours: the record in the checkpoint names it
            extra = {"generator_module_sha256": data.get("generator_sha256"),
                     "generator_file_sha256": data.get("generator_file_sha256")}
        else:
            generator = trained_with.get("generator")
            generator_file = embedded_path("generator") if generator in (None, "faceworld") else generator
            extra = {"generator_sha256": sha256_file(generator_file)}
        extra.update(extra_log)
    else:
        net = ReconstructionNet.load(checkpoint)
        data = net.checkpoint()
        state = {k: (v if k in ("param_mean", "param_std") else _half(v)) for k, v in data["state_dict"].items()}
        data["state_dict"] = state
        atomic_torch_save(data, out)
        extra = {}
    manifest = read_manifest()
    manifest[name] = {
        "file": out.name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "command": command,
        "seed": int(seed),
        "metrics": metrics or {},
        "notes": notes,
        **extra,
    }
    atomic_write_json(MANIFEST, manifest)
    return out
