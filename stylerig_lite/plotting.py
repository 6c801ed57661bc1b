"""Figure helpers shared by the chapters: image grids, overlays, curves.

Images in the package are tensors ``[B, 3, H, W]`` in [0, 1] (rendered faces)
or [-1, 1] (GAN images, converted with :func:`to_unit`). These helpers only
draw; they never compute anything the book reports.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Map GAN images in [-1, 1] to [0, 1]."""
    return ((images + 1) / 2).clamp(0, 1)


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, H, W]``) tensor in [0, 1] -> ``[H, W, 3]`` array for ``imshow``."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.permute(1, 2, 0).numpy()


def image_grid(
    images: torch.Tensor,
    *,
    ncols: Optional[int] = None,
    titles: Optional[Sequence[str]] = None,
    row_labels: Optional[Sequence[str]] = None,
    scale: float = 1.6,
    suptitle: Optional[str] = None,
):
    """A matplotlib figure showing ``images [N, 3, H, W]`` in a grid; returns the figure."""
    import matplotlib.pyplot as plt

    n = images.shape[0]
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.3 if suptitle else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i < n:
            ax.imshow(to_numpy_image(images[i]))
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=8)
    if row_labels is not None:
        for r, label in enumerate(row_labels[:nrows]):
            axes[r, 0].set_ylabel(label, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def overlay_landmarks(ax, landmarks: torch.Tensor, *, colour: str = "lime", size: float = 4.0, label: Optional[str] = None) -> None:
    """Scatter 2D landmarks ``[68, 2]`` (pixels, origin at the top-left corner) onto an axis showing an image.

    ``imshow`` puts pixel (i, j)'s centre at (j, i); our pixel coordinates put
    it at (j + 0.5, i + 0.5), hence the half-pixel shift.
    """
    points = landmarks.detach().cpu().numpy() - 0.5
    ax.scatter(points[:, 0], points[:, 1], s=size, c=colour, label=label, linewidths=0)


def loss_curve(values: Sequence[float], *, ax=None, label: Optional[str] = None, log: bool = True):
    """Plot a training or fitting curve; returns the axis."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 2.6))
    ax.plot(np.arange(len(values)), values, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if label:
        ax.legend()
    ax.grid(alpha=0.3)
    return ax


def overview_figure(world=None, *, seeds: Sequence[int] = (3, 14, 15, 92, 65), image_size: int = 96):
    """The README's overview: random rig parameters, their 3DMM rendering, and the FaceWorld portrait.

    Shown in the FaceWorld appendix; written to ``book/figures/overview.png`` by
    ``python -m stylerig_lite.plotting overview book/figures/overview.png``.
    """
    import dataclasses

    import matplotlib.pyplot as plt

    from .face_render import render_face
    from .world import FaceWorld, WorldConfig

    if world is None or world.config.image_size != image_size:
        base = world.config if world is not None else WorldConfig()
        world = FaceWorld(world.model if world is not None else None, dataclasses.replace(base, image_size=image_size))
    fig, axes = plt.subplots(2, len(seeds), figsize=(1.7 * len(seeds), 3.7))
    for c, seed in enumerate(seeds):
        portrait = world.sample(1, seed=seed)
        rig = render_face(world.model, portrait.params, world.camera, background=1.0).image
        yaw, pitch, roll = portrait.params.angles_deg[0].tolist()
        for r, image in enumerate([rig[0], portrait.images[0]]):
            ax = axes[r, c]
            ax.imshow(to_numpy_image(image))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, c].set_title(f"yaw {yaw:+.0f}° roll {roll:+.0f}°", fontsize=7)
    axes[0, 0].set_ylabel("3DMM render of p", fontsize=8)
    axes[1, 0].set_ylabel("FaceWorld image", fontsize=8)
    fig.suptitle("The rig (top) and the world a GAN learns (bottom): same parameters p", fontsize=9)
    fig.tight_layout()
    return fig


def reconstruction_figure(images: torch.Tensor, estimator, model, *, value_range=(0.0, 1.0), true_landmarks=None):
    """A picture like StyleRig's Figure 4: input, F's re-rendering, and the overlay with landmarks.

    ``images [N, 3, H, W]`` in ``value_range``; ``estimator`` is F (``.estimate``); ``model`` the face
    model. Rows: the input, the 3DMM rendering of F's parameters (face only, on white), the
    rendering pasted over the input where its mask is, with F's landmarks (lime) and, if given, the
    true ones (magenta). Returns the figure.
    """
    import matplotlib.pyplot as plt

    from .face_render import default_camera, render_face

    with torch.no_grad():
        params, landmarks = estimator.estimate(images, value_range=value_range)
        lo, hi = value_range
        unit = ((images - lo) / (hi - lo)).clamp(0, 1)
        render = render_face(model, params, default_camera(images.shape[-1]), parts=("face",), background=1.0)
        mask = render.mask.reshape(unit.shape[0], 1, *unit.shape[-2:])  # [N, 1, H, W]
        overlay = torch.where(mask > 0, render.image, unit)
    n = images.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.45 * n, 4.6), squeeze=False)
    for c in range(n):
        for r, picture in enumerate([unit[c], render.image[c], overlay[c]]):
            axes[r, c].imshow(to_numpy_image(picture))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        if true_landmarks is not None:
            overlay_landmarks(axes[2, c], true_landmarks[c], colour="magenta", size=3)
        overlay_landmarks(axes[2, c], landmarks[c], size=3)
    for r, label in enumerate(["input I", "render of F(I)", "overlay"]):
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stylerig_lite.plotting", description="Write the book's standalone figures.")
    parser.add_argument("figure", choices=["overview"])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    fig = overview_figure()
    fig.savefig(args.path, dpi=110)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
