"""Baselines a RigNet is compared with: linear directions in W (InterFaceGAN-style).

Floor: networks (a peer of :mod:`~stylerig_lite.rignet`: both are edit methods
``(w [B, num_ws, w_dim], p_target [B, 196]) -> ŵ``). Defined in chapter 2
(``notebooks/02_corpus_generation.ipynb``, "A linear baseline"), scored beside
RigNet in chapter 5 through :mod:`~stylerig_lite.evaluate`'s method table.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from .checks import assert_finite, assert_shape
from .io_utils import CheckpointError, atomic_torch_save, load_checkpoint_file
from .params import NUM_PARAMS, rig_component, rig_slice

__all__ = ["DEFAULT_RIDGE", "LinearBaseline"]

DEFAULT_RIDGE = 1e-2  # relative ridge penalty of the regression (see LinearBaseline.fit)

def _first_w(ws: torch.Tensor, name: str) -> torch.Tensor:
    """``[N, num_ws, w_dim]`` (or ``[N, w_dim]``) -> the W vector ``[N, w_dim]`` (layer 0 of W+)."""
    if not isinstance(ws, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ws).__name__}")
    if ws.ndim == 3:
        return ws[:, 0]
    if ws.ndim == 2:
        return ws
    raise ValueError(f"{name} has shape {tuple(ws.shape)}; expected W+ latents [N, num_ws, w_dim] or W vectors [N, w_dim]")


class LinearBaseline:
    """Edit a rig component by moving w along linearly regressed directions.

    :meth:`fit` ridge-regresses the component's entries ``y`` (``k`` values:
    3 angles, 53 expression weights or 27 SH coefficients; see
    :data:`~stylerig_lite.params.RIG_SLICES`) from the W vector, ``y ≈ A w + b`` with ``A``
    ``[k, w_dim]``. An edit then moves w by the minimum-norm step that makes
    the prediction hit the target, ``Δw = A⁺ (t - (A w + b))``, the same
    ``Δw`` for every layer of W+. This is the InterFaceGAN idea (Shen et al.
    2020: attributes are linear in W) with regression instead of an SVM,
    because our attributes are continuous.

    Everything a linear edit of W cannot do shows up in the metrics: the
    directions of correlated components (say, light that follows yaw in the
    corpus) are entangled, so moving along one moves the other.
    """

    def __init__(self, component: str, weight: torch.Tensor, bias: torch.Tensor, *, ridge: float = DEFAULT_RIDGE,
                 r2: Optional[Sequence[float]] = None):
        self.component = rig_component(component)
        index = rig_slice(component)
        k = index.stop - index.start
        assert_shape(weight, [k, None], "weight A")
        assert_shape(bias, [k], "bias b")
        assert_finite(weight, "weight A")
        assert_finite(bias, "bias b")
        self.weight = weight.double()  # [k, w_dim]
        self.bias = bias.double()  # [k]
        # The pseudo-inverse gives the minimum-norm step; rcond drops directions the corpus never moves.
        self.pinv = torch.linalg.pinv(self.weight, rtol=1e-10)  # [w_dim, k]
        self.ridge = float(ridge)
        self.r2 = list(r2) if r2 is not None else None

    @property
    def w_dim(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def fit(cls, ws: torch.Tensor, params: Any, component: str, *, ridge: float = DEFAULT_RIDGE) -> "LinearBaseline":
        """Ridge regression of ``params``' ``component`` entries on ``ws`` (``[N, num_ws, w_dim]`` or ``[N, w_dim]``).

        ``params``: ``[N, 196]`` (F's estimates, e.g. a corpus's ``params``) or a
        :class:`~stylerig_lite.morphable.FaceParams`. ``ridge`` is relative: the
        penalty is ``ridge`` times the mean variance of a w coordinate, so it
        does not depend on the scale of W; ``0`` is ordinary least squares.
        """
        component = rig_component(component)
        x = _first_w(ws, "ws").double()
        if hasattr(params, "to_vector"):
            params = params.to_vector()
        assert_shape(params, [x.shape[0], NUM_PARAMS], "params")
        assert_finite(x, "ws")
        assert_finite(params, "params")
        if ridge < 0 or not math.isfinite(ridge):
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 samples to fit, got {x.shape[0]}")
        y = params[:, rig_slice(component)].double()  # [N, k]
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc, yc = x - x_mean, y - y_mean
        n, d = xc.shape
        gram = xc.T @ xc / n  # [D, D] covariance of w
        penalty = ridge * float(torch.diagonal(gram).mean())
        # Solve (C + λ I) Aᵀ = Xᵀ Y / n; lstsq also copes with a singular C at λ = 0.
        weight_t = torch.linalg.lstsq(gram + penalty * torch.eye(d, dtype=gram.dtype), xc.T @ yc / n).solution  # [D, k]
        weight = weight_t.T
        bias = y_mean - weight @ x_mean
        residual = yc - xc @ weight_t
        r2 = (1 - residual.pow(2).sum(0) / yc.pow(2).sum(0).clamp_min(1e-30)).tolist()
        return cls(component, weight, bias, ridge=ridge, r2=r2)

    @classmethod
    def fit_corpus(cls, corpus: Any, component: str, *, ridge: float = DEFAULT_RIDGE,
                   limit: Optional[int] = None) -> "LinearBaseline":
        """:meth:`fit` on a :class:`~stylerig_lite.corpus.CorpusDataset` (its ``w`` and ``params``; first ``limit`` items).

        A folder path is not opened here (a model module does not read the data floor):
        pass ``CorpusDataset(folder)``.
        """
        if isinstance(corpus, (str, os.PathLike)):
            raise TypeError(f"fit_corpus takes an opened corpus, got the path {str(corpus)!r}: "
                            "pass stylerig_lite.corpus.CorpusDataset(path)")
        if not (hasattr(corpus, "w") and hasattr(corpus, "params")):
            raise TypeError(f"fit_corpus needs a corpus with .w and .params tensors, got {type(corpus).__name__}")
        data = corpus
        index = slice(None) if limit is None else slice(0, int(limit))
        return cls.fit(data.w[index], data.params[index], component, ridge=ridge)

    def predict(self, w: torch.Tensor) -> torch.Tensor:
        """The regressed component ``[B, k]`` of latents ``[B, num_ws, w_dim]`` (or ``[B, w_dim]``)."""
        x = _first_w(w, "w")
        assert_shape(x, [None, self.w_dim], "w")
        return (x.double() @ self.weight.T + self.bias).to(x.dtype)

    def __call__(self, w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        """``ŵ = w + A⁺ (t - (A w₀ + b))`` on every layer: ``[B, num_ws, w_dim], [B, 196] -> [B, num_ws, w_dim]``."""
        assert_shape(w, [None, None, self.w_dim], "w (W+ latents)")
        assert_shape(p_target, [w.shape[0], NUM_PARAMS], "p_target")
        assert_finite(w, "w (W+ latents)")
        assert_finite(p_target, "p_target")
        t = p_target[:, rig_slice(self.component)].double()  # [B, k]
        step = (t - (w[:, 0].double() @ self.weight.T + self.bias)) @ self.pinv.T  # [B, w_dim]
        return w + step.to(w.dtype)[:, None, :]

    def state(self) -> Dict[str, Any]:
        return {"format": "stylerig_lite.linear_baseline/1", "component": self.component, "weight": self.weight,
                "bias": self.bias, "ridge": self.ridge, "r2": self.r2}

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the directions atomically (read back with :meth:`load`)."""
        return atomic_torch_save(self.state(), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "LinearBaseline":
        data = load_checkpoint_file(path, "LinearBaseline file", "fit one with LinearBaseline.fit and save it with .save")
        if not isinstance(data, dict) or data.get("format") != "stylerig_lite.linear_baseline/1":
            raise CheckpointError(f"{path} is not a LinearBaseline file (save one with LinearBaseline.save)")
        return cls(data["component"], data["weight"], data["bias"], ridge=data["ridge"], r2=data["r2"])

    def __repr__(self) -> str:
        r2 = "" if self.r2 is None else f", mean R² {sum(self.r2) / len(self.r2):.3f}"
        return f"LinearBaseline({self.component!r}, w_dim={self.w_dim}, k={self.weight.shape[0]}, ridge={self.ridge:g}{r2})"
