"""A toy generator, estimator and rigs whose pose is known exactly, for the editor's tests.

They follow the protocols of :mod:`stylerig_lite.editing` (``mapping``/``synthesis``,
``estimate(images, value_range)``, ``rig(w, p_target) -> w_hat``) without any training:

* latent coordinate 0 is the yaw (``YAW_SCALE`` degrees per unit); the image is a dark square
  with a bright vertical bar whose column moves right with yaw (as a face turning to
  positive yaw moves its nose to the image right);
* latent coordinate 1 is the jaw opening; it sets the bar's green channel;
* the estimator reads both back from the image, so the yaw the editor shows is measurable.

Used by ``tests/test_editing.py`` and by the notebook that ``tests/test_browser.py`` serves
with Voila (which imports this file from the tests folder).
"""

from __future__ import annotations

import math

import torch

from stylerig_lite.morphable import EXPRESSION_NAMES, SLICES, FaceParams

YAW_SCALE = 20.0  # degrees per latent unit
MAX_YAW = 60.0  # the bar spans the image for yaw in [-MAX_YAW, MAX_YAW]
JAW = EXPRESSION_NAMES.index("jawOpen")


class ToyGenerator(torch.nn.Module):
    """``mapping(z) -> ws [B, num_ws, w_dim]``, ``synthesis(ws) -> [B, 3, R, R]`` in [-1, 1]."""

    def __init__(self, resolution: int = 32, num_ws: int = 4, w_dim: int = 6):
        super().__init__()
        self.z_dim = self.w_dim = w_dim
        self.num_ws = num_ws
        self.img_resolution = resolution
        self.register_buffer("scale", torch.ones(()))  # gives the module a device
        self.synthesis_calls = 0

    def mapping(self, z: torch.Tensor, c=None, truncation_psi: float = 1.0) -> torch.Tensor:
        w = 0.5 * torch.tanh(z) * truncation_psi  # yaw within ±10° at psi 1, jaw in [0, 0.5)
        w = torch.cat([w[:, :1], w[:, 1:2].abs(), w[:, 2:]], dim=1)
        return w[:, None, :].expand(-1, self.num_ws, -1).clone()

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        self.synthesis_calls += 1
        size = self.img_resolution
        yaw = ws[:, :, 0].mean(1) * YAW_SCALE  # [B] degrees
        jaw = ws[:, :, 1].mean(1).clamp(0, 1)  # [B]
        column = (size - 1) / 2 + yaw / MAX_YAW * (size / 2 - 2)  # [B] bar centre in pixels
        x = torch.arange(size, dtype=ws.dtype)
        bar = (1 - (x[None] - column[:, None]).abs().clamp(max=1.5) / 1.5)  # [B, R] tent 3 px wide
        image = -torch.ones(ws.shape[0], 3, size, size)
        image[:, 0] += 2 * bar[:, None, :]
        image[:, 1] += 2 * bar[:, None, :] * jaw[:, None, None]
        image[:, 2] += 2 * bar[:, None, :]
        return image


class ToyEstimator:
    """Reads yaw (from the bar's column) and jaw opening (from its green) back: ``(FaceParams, None)``."""

    def estimate(self, images: torch.Tensor, value_range=(-1, 1)):
        lo, hi = value_range
        unit = ((images - lo) / (hi - lo)).clamp(0, 1)  # [B, 3, R, R]
        size = images.shape[-1]
        red = unit[:, 0].mean(1)  # [B, R] column profile of the bar
        x = torch.arange(size, dtype=unit.dtype)
        column = (red * x).sum(1) / red.sum(1).clamp_min(1e-6)
        yaw = (column - (size - 1) / 2) / (size / 2 - 2) * MAX_YAW
        jaw = (unit[:, 1].mean(1) * red).sum(1) / (red * red).sum(1).clamp_min(1e-6)
        params = FaceParams.neutral(images.shape[0])
        pose, expression = params.pose.clone(), params.expression.clone()
        pose[:, 0] = torch.deg2rad(yaw)
        expression[:, JAW] = jaw
        return params.replace(pose=pose, expression=expression), None


def yaw_rig(w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
    """Adds the fixed yaw direction e_0, scaled so that the latent's yaw becomes the target's."""
    target = torch.rad2deg(p_target[:, SLICES["pose"].start])  # [B] degrees
    current = w[:, :, 0].mean(1) * YAW_SCALE
    direction = torch.zeros_like(w)
    direction[..., 0] = 1.0
    return w + direction * ((target - current) / YAW_SCALE)[:, None, None]


def jaw_rig(w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
    """Sets latent coordinate 1 (the bar's green) to the target jawOpen weight."""
    w = w.clone()
    w[..., 1] = p_target[:, SLICES["expression"].start + JAW][:, None]
    return w


def light_rig(w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
    """A rig that changes nothing the toy estimator reads (the toy has no light)."""
    return w + 0.0


def toy_rigs():
    return {"pose": yaw_rig, "expression": jaw_rig, "light": light_rig}


def radians(deg: float) -> float:
    return math.radians(deg)
