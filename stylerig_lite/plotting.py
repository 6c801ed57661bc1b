"""Figure helpers shared by the chapters: image grids, overlays, curves.

Images in the package are tensors ``[B, 3, H, W]`` in [0, 1] (rendered faces)
or [-1, 1] (GAN images, converted with :func:`to_unit`). These helpers draw; the
numbers the book reports are computed in :mod:`~stylerig_lite.evaluate`. A few figures
run the networks they picture and show what they read in their own titles (the loss values
of :func:`rig_losses_figure`, the judge's readings of :func:`judged_sweeps_figure`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .camera import affine_points
from .params import RIG_COMPONENTS

__all__ = [
    "edit_grid",
    "edit_sweep_figure",
    "image_grid",
    "METRIC_LABELS",
    "metric_label",
    "rig_losses_figure",
    "style_mixing_figure",
    "worst_edits_figure",
    "loss_curve",
    "main",
    "overlay_landmarks",
    "overview_figure",
    "part_map",
    "reconstruction_figure",
    "figure4",
    "latent_f_curves",
    "rignet_diagram",
    "slider_edits_figure",
    "judged_sweeps_figure",
    "rignet_curves",
    "SWEEP_READINGS",
    "PHOTOREAL_SWEEPS",
    "photoreal_edits_figure",
    "photo_edit_figure",
    "turn_response_figure",
    "SLIDER_SWEEPS",
    "to_numpy_image",
    "to_unit",
    "tradeoff_plot",
    # chapters 3 and 4
    "estimate_scatter_figure",
    "FIT_CURVES",
    "fit_history_figure",
    "images_with_difference",
    "loss_sweep_figure",
    "rasterization_figure",
    "SH_FUNCTIONS",
    "sh_basis_figure",
    "sphere_shading_figure",
    "triangle_zoom_figure",
]


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


def part_map(ax, part_index: torch.Tensor, names: Sequence[str], *, legend: bool = True, fontsize: float = 6):
    """Draw a part map on ``ax``: each part in its own colour, the background white, and a legend.

    ``part_index [H, W]``: integers, the index into ``names`` of the part each pixel shows, -1 on
    the background (a renderer's ``part_index``). The legend names the parts that appear, in
    words (``head_neck`` becomes "head neck"), beside the image. Returns the axis.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    index = torch.as_tensor(part_index).detach().long().cpu()
    colours = [plt.get_cmap("tab10")(i % 10)[:3] for i in range(len(names))]
    image = np.ones((*index.shape, 3))
    for i, colour in enumerate(colours):
        image[(index == i).numpy()] = colour
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        present = sorted(i for i in index.unique().tolist() if 0 <= i < len(names))
        handles = [Patch(color=colours[i], label=names[i].replace("_", " ")) for i in present]
        ax.legend(handles=handles, fontsize=fontsize, loc="center left", bbox_to_anchor=(1.02, 0.5),
                  frameon=False, handlelength=1.0)
    return ax


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


def tradeoff_plot(curves: Any, *, target: str = "yaw_deg", preservation: str = "outside_face_mae_255", ax=None):
    """Target error against collateral change, one line per method through its gains.

    ``curves``: ``{method name: {gain: evaluate_method result}}`` (:func:`stylerig_lite.evaluate.gain_sweep`);
    ``target`` / ``preservation``: keys of the results' ``target_error`` / ``preservation``. A better
    method's line runs lower and further left. Returns the axis.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 3.3))
    for i, (name, curve) in enumerate(curves.items()):
        points = []
        for gain, result in sorted(curve.items()):
            for part, key in (("target_error", target), ("preservation", preservation)):
                if key not in result[part]:
                    raise KeyError(f"{name} x{gain:g}: no {part} {key!r}; it has {sorted(result[part])}")
            points.append((gain, result["preservation"][preservation], result["target_error"][target]))
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=name, markersize=4)
        for gain, x, y in points:
            ax.annotate(f"x{gain:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points", color=f"C{i}")
    ax.set_xlabel(f"collateral change: {metric_label(preservation)}")
    ax.set_ylabel(f"target error: {metric_label(target)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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

    ``images [N, 3, H, W]`` in ``value_range``; ``estimator`` is the image F (``.estimate``); ``model``
    the face model. Rows: the input, the 3DMM rendering of F's parameters (face only, on white), the
    rendering pasted over the input where its mask is, with F's landmarks (lime) and, if given, the
    true ones (magenta). Returns the figure. :func:`figure4` draws it from parameters (the latent F).
    """
    with torch.no_grad():
        params, landmarks = estimator.estimate(images, value_range=value_range)
    lo, hi = value_range
    unit = ((images - lo) / (hi - lo)).clamp(0, 1)
    return figure4(unit, params, model, reference_landmarks=true_landmarks,
                   row_labels=("input I", "render of F(I)", "overlay"))


def figure4(images: torch.Tensor, params, model, *, reference_landmarks=None, reference_colour: str = "magenta",
            row_labels: Sequence[str] = ("I_w", "render of F(w)", "overlay"), titles: Optional[Sequence[str]] = None,
            scale: float = 1.45):
    """StyleRig's Figure-4 picture from 3DMM parameters: input, rendering, overlay with landmarks.

    ``images [N, 3, S, S]`` in [0, 1]; ``params``: :class:`~stylerig_lite.morphable.FaceParams` or
    ``[N, 196]`` (rendered at S px with the book's camera, face region only); ``reference_landmarks``
    ``[N, 68, 2]`` pixels (the truth, or a detector's; NaN rows are skipped) in ``reference_colour``,
    beside the parameters' projected landmarks in lime. ``titles``: one per column. Returns the figure.
    """
    import matplotlib.pyplot as plt

    from .face_render import default_camera, render_face
    from .morphable import FaceParams

    if isinstance(params, torch.Tensor):
        params = FaceParams.from_vector(params)
    with torch.no_grad():
        render = render_face(model, params, default_camera(images.shape[-1]), parts=("face",), background=1.0)
        mask = render.mask.reshape(images.shape[0], 1, *images.shape[-2:])  # [N, 1, S, S]
        overlay = torch.where(mask > 0, render.image, images)
    n = images.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(scale * n, 3.2 * scale), squeeze=False)
    for c in range(n):
        for r, picture in enumerate([images[c], render.image[c], overlay[c]]):
            axes[r, c].imshow(to_numpy_image(picture))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        if reference_landmarks is not None and bool(torch.isfinite(reference_landmarks[c]).all()):
            overlay_landmarks(axes[2, c], reference_landmarks[c], colour=reference_colour, size=3)
        overlay_landmarks(axes[2, c], render.landmarks[c], size=3)
        if titles is not None:
            axes[0, c].set_title(titles[c], fontsize=8)
    for r, label in enumerate(row_labels):
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def edit_grid(
    edited: torch.Tensor,
    *,
    sources: Optional[torch.Tensor] = None,
    headers: Optional[torch.Tensor] = None,
    column_labels: Optional[Sequence[str]] = None,
    row_labels: Optional[Sequence[str]] = None,
    header_label: str = "target (3DMM)",
    source_label: str = "source",
    scale: float = 1.25,
    suptitle: Optional[str] = None,
):
    """A grid of edits: rows are faces, columns are edit targets; returns the figure.

    ``edited [R, C, 3, H, W]`` in [0, 1]: row ``r`` is face ``r`` edited toward target ``c``.
    ``sources [R, 3, H, W]`` (optional) adds a first column with the unedited faces;
    ``headers [C, 3, H, W]`` (optional) adds a first row above the edits, e.g. the 3DMM
    renderings of the targets. ``column_labels`` (``C`` strings) title the columns,
    ``row_labels`` (``R`` strings) label the rows. Images of other sizes than the edits
    (a smaller render) are drawn at the same cell size.
    """
    import matplotlib.pyplot as plt

    if edited.ndim != 5 or edited.shape[2] not in (1, 3):
        raise ValueError(f"edited must be [rows, columns, 3, H, W], got shape {tuple(edited.shape)}")
    R, C = edited.shape[:2]
    if sources is not None and sources.shape[0] != R:
        raise ValueError(f"sources has {sources.shape[0]} images for {R} rows")
    if headers is not None and headers.shape[0] != C:
        raise ValueError(f"headers has {headers.shape[0]} images for {C} columns")
    for name, labels, n in (("column_labels", column_labels, C), ("row_labels", row_labels, R)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} entries, expected {n}")
    top, left = int(headers is not None), int(sources is not None)
    fig, axes = plt.subplots(R + top, C + left, figsize=(scale * (C + left), scale * (R + top) + (0.35 if suptitle else 0.1)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if top and left:
        axes[0, 0].axis("off")
    for c in range(C):
        if headers is not None:
            axes[0, left + c].imshow(to_numpy_image(headers[c]))
        if column_labels is not None:
            axes[0, left + c].set_title(column_labels[c], fontsize=8)
    if headers is not None:
        axes[0, left].set_ylabel(header_label, fontsize=8)
    for r in range(R):
        if sources is not None:
            axes[top + r, 0].imshow(to_numpy_image(sources[r]))
        for c in range(C):
            axes[top + r, left + c].imshow(to_numpy_image(edited[r, c]))
        if row_labels is not None:
            axes[top + r, 0].set_ylabel(row_labels[r], fontsize=8)
    if sources is not None:
        axes[0 if not top else 1, 0].set_title(source_label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


#: Words for the result keys of :mod:`stylerig_lite.evaluate` that :func:`tradeoff_plot` puts on its axes.
METRIC_LABELS = {
    "yaw_deg": "yaw error (degrees)",
    "pitch_deg": "pitch error (degrees)",
    "roll_deg": "roll error (degrees)",
    "jaw_open_mae": "jaw opening error (weight)",
    "light_rmse": "light change (SH coefficients, RMSE)",
    "albedo_rmse": "skin colour change (RMSE, standard deviations)",
    "translation_cm": "head position change (cm)",
    "identity_distance": "identity distance (dlib)",
    "outside_face_mae_255": "change outside the face (0-255)",
}


def metric_label(key: str) -> str:
    """A result key in words (:data:`METRIC_LABELS`); an unknown key with its underscores as spaces."""
    return METRIC_LABELS.get(key, key.replace("_", " "))


def style_mixing_figure(G: Any, top: torch.Tensor, left: torch.Tensor, groups: Dict[str, Sequence[int]]):
    """Style mixing: the named groups of W+ rows from the faces on top, all other rows from the faces on the left.

    ``top [T, num_ws, w_dim]`` and ``left [L, num_ws, w_dim]``: W+ latents of a generator ``G``
    (``G.synthesis(ws, noise_mode="const")`` gives images in [-1, 1]); ``groups``: a row label
    (e.g. ``"coarse\\n(4-8 px)"``) -> the W+ rows it swaps. The first row shows the ``top`` faces;
    then, per group, one row per ``left`` face: that face, then it with the group's rows taken from
    each top face. The group's name labels its middle row. Returns the figure
    (``1 + L * len(groups)`` rows, ``T + 1`` columns).
    """
    import matplotlib.pyplot as plt

    T, L = top.shape[0], left.shape[0]

    def draw(ws: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return to_numpy_image(to_unit(G.synthesis(ws, noise_mode="const"))[0])

    fig, axes = plt.subplots(1 + L * len(groups), T + 1, figsize=(1.12 * (T + 1), 1.12 * (1 + L * len(groups)) + 0.3),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].axis("off")
    for i in range(T):
        axes[0, i + 1].imshow(draw(top[i:i + 1]))
    row = 1
    for name, layers in groups.items():
        layers = list(layers)
        for t in range(L):
            axes[row, 0].imshow(draw(left[t:t + 1]))
            if t == L // 2:
                axes[row, 0].set_ylabel(name, fontsize=8)
            for i in range(T):
                mixed = left[t:t + 1].clone()
                mixed[:, layers] = top[i:i + 1, layers]  # swap one group of W+ rows
                axes[row, i + 1].imshow(draw(mixed))
            row += 1
    fig.suptitle("the named layers from the top row, all others from the left column", fontsize=9)
    fig.tight_layout()
    return fig


def rig_losses_figure(net: Any, G: Any, F: Any, render_loss: Any, face_model: Any, w: torch.Tensor, v: torch.Tensor):
    """What StyleRig's three losses compare, for one pair of W+ latents ``w``, ``v`` (``[1, num_ws, w_dim]`` each).

    Top row: ``I_w = G(w)``, ``I_v = G(v)``, the edit ``G(ŵ)`` with ``ŵ = net(w, p_v)``, and the
    images ``L_edit`` and ``L_consist`` are measured against. Bottom row: 3DMM renderings of
    ``p_w``, ``p_v`` and ``p̂ = F(G(ŵ))``, then the two spliced renderings pasted over their images
    on the rendered face mask (where the photometric term looks). The title gives the three loss
    values (:func:`~stylerig_lite.rignet.rec_loss`, ``edit_loss``, ``consistency_loss`` with
    ``render_loss``, a :class:`~stylerig_lite.losses.RenderLoss` at F's image size). ``net``: a
    :class:`~stylerig_lite.rignet.RigNet` of ``G``; ``F``: the image F. Returns the figure.
    """
    from . import rignet
    from .face_render import default_camera, render_face

    c = net.component
    with torch.no_grad():
        sw, sv = rignet.describe(G, F, w), rignet.describe(G, F, v)  # images as F sees them, p, landmarks
        rec = rignet.rec_loss(net(w, c.take(sw.params)), w)
        edited = rignet.describe(G, F, net(w, c.take(sv.params)))  # G(ŵ) and p̂
        edit = rignet.edit_loss(render_loss, c, edited.params, sv.params, sv.image, sv.landmarks)
        consist = rignet.consistency_loss(render_loss, c, edited.params, sw.params, sw.image, sw.landmarks)
        plain = render_face(face_model, torch.cat([sw.params, sv.params, edited.params]),
                            default_camera(F.config.image_size), background=1.0).image

    def paste(terms: Any, image: torch.Tensor) -> torch.Tensor:
        return torch.where(terms.render.mask > 0, terms.render.image, image)

    tiles = [sw.image, sv.image, edited.image, sv.image, sw.image,
             plain[0:1], plain[1:2], plain[2:3], paste(edit, sv.image), paste(consist, sw.image)]
    titles = ["I_w = G(w)", "I_v = G(v)", "G(ŵ), ŵ = RigNet(w, p_v)", "I_v (L_edit)", "I_w (L_consist)",
              "render p_w", "render p_v", "render p̂ = F(G(ŵ))", "p_v + target of p̂", "p̂ + target of p_w"]
    return image_grid(torch.cat(tiles), ncols=5, titles=titles, scale=1.7, row_labels=["images", "3DMM renders"],
                      suptitle=f"{c.name}: L_rec {float(rec):.3g}   L_edit {float(edit.total):.3g}   "
                               f"L_consist {float(consist.total):.3g}")


def edit_sweep_figure(G: Any, rig: Any, ws: torch.Tensor, targets: Sequence[torch.Tensor], labels: Sequence[str],
                      face_model: Any, *, sources: Optional[torch.Tensor] = None,
                      row_labels: Optional[Sequence[str]] = None, title: Optional[str] = None):
    """Edit every face toward each target with one RigNet and draw the grid (:func:`edit_grid`).

    ``ws [R, num_ws, w_dim]``: the faces; ``targets``: ``C`` parameter tensors ``[R, 196]`` (one per
    column, one row per face); ``labels``: the ``C`` column titles; ``rig``: ``rig(ws, params) -> ŵ``
    (:meth:`~stylerig_lite.rignet.RigNet.rig`). The first row renders the first face's targets
    with the 3DMM; ``sources [R, 3, H, W]`` in [-1, 1] (default ``G(ws)``) fills the first column.
    Returns ``(figure, edited)`` with ``edited [R, C, 3, H, W]`` in [-1, 1].
    """
    from .corpus import synthesize
    from .face_render import default_camera, render_face

    if len(targets) != len(labels):
        raise ValueError(f"{len(targets)} targets for {len(labels)} column labels")
    with torch.no_grad():
        if sources is None:
            sources = synthesize(G, ws)
        edited = torch.stack([synthesize(G, rig(ws, t)) for t in targets], dim=1)  # [R, C, 3, H, W]
        headers = render_face(face_model, torch.cat([t[:1] for t in targets]),
                              default_camera(G.img_resolution), background=1.0).image
    fig = edit_grid(to_unit(edited), sources=to_unit(sources), headers=headers, column_labels=list(labels),
                    row_labels=row_labels, header_label="target (row 1)", suptitle=title)
    return fig, edited


def worst_edits_figure(worst: Dict[str, Any], face_model: Any, *, title: Optional[str] = None):
    """The worst edits of :func:`stylerig_lite.evaluate.worst_edits`, one row each.

    Columns: the face ``G(w)``, the donor of the target ``G(v)``, the edit ``G(ŵ)``, the 3DMM
    rendering of the target and the rendering of what E reads in the edit; each row is labelled
    with its error (degrees for the pose). Returns the figure.
    """
    from .face_render import default_camera, render_face

    size = worst["edited"].shape[-1]
    camera = default_camera(size)
    with torch.no_grad():
        renders = [render_face(face_model, worst[k], camera, background=1.0).image for k in ("target", "estimated")]
    tiles = torch.stack([to_unit(worst["source"]), to_unit(worst["donor"]), to_unit(worst["edited"]), *renders], dim=1)
    unit = "°" if worst["component"] == "pose" else ""
    return edit_grid(tiles, column_labels=["face w", "donor v", "edit G(ŵ)", "target (3DMM)", "E reads"],
                     row_labels=[f"error {float(e):.2f}{unit}" for e in worst["error"]],
                     suptitle=title if title is not None else f"{worst['component']}: worst edits")


def rignet_diagram(*, num_ws: int = 10, w_dim: int = 256, latent_dim: int = 32, param_dim: int = 3,
                   component: str = "pose", shown_layers: int = 3):
    """StyleRig's RigNet as a box-and-arrow diagram (for a RigNet's config); returns the figure.

    Per W+ layer ``i``: ``w_i`` -> Enc_i (linear, ``w_dim`` -> ``latent_dim``) -> ``l_i``; the
    target parameters ``p`` (normalised) are concatenated with ``l_i``; Dec_i (linear,
    ``latent_dim + P`` -> ``w_dim``) gives ``d_i``; ``ŵ_i = w_i + d_i`` goes to the frozen
    generator. ``shown_layers`` layers are drawn (the last one is layer ``num_ws``).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    shown = max(1, min(int(shown_layers), int(num_ws)))
    layers = list(range(1, shown)) + [int(num_ws)]
    row_h = 1.25
    p_x, p_y = 3.0, 0.0
    ys = [p_y - row_h * (k + 1) for k in range(shown)]
    fig, ax = plt.subplots(figsize=(10.5, 0.8 * (row_h * shown + 1.6)))
    ax.set_xlim(0, 13.4)
    ax.set_ylim(ys[-1] - 0.65, p_y + 0.85)
    ax.axis("off")

    def box(x, y, w, h, text, colour, fontsize=8):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=colour, ec="0.25", lw=0.9))
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)

    def arrow(x0, y0, x1, y1, colour="0.2"):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=9, color=colour, lw=0.9,
                                     shrinkA=0, shrinkB=0))

    ax.text(0.05, p_y + 0.6, f"RigNet ({component}): one linear encoder and decoder per W+ layer ({num_ws} layers); "
            "the decoders start at zero, so an untrained RigNet returns ŵ = w", fontsize=9, ha="left", va="center")
    box(p_x, p_y, 2.7, 0.62, f"target p ({component}, P = {param_dim})\nnormalised: (p − mean) / std", "#fde2c4")
    bus_x, orange = 4.62, "#c07a2c"
    ax.plot([p_x + 1.39, bus_x, bus_x], [p_y, p_y, ys[-1] + 0.5], color=orange, lw=0.9)
    for k, (i, y) in enumerate(zip(layers, ys)):
        if k == shown - 1 and shown < num_ws:
            for x in (0.55, 2.15, 7.05, 10.85):
                ax.text(x, y + row_h / 2, "⋮", ha="center", va="center", fontsize=13)
        box(0.55, y, 0.9, 0.5, f"$w_{{{i}}}$\n[{w_dim}]", "#dbe9f6")
        box(2.15, y, 1.55, 0.58, f"Enc$_{{{i}}}$  linear\n{w_dim} → {latent_dim}", "#c9e4c5")
        box(3.75, y, 0.9, 0.5, f"$l_{{{i}}}$\n[{latent_dim}]", "#eeeeee")
        box(5.35, y, 1.15, 0.5, f"concat\n[{latent_dim}+{param_dim}]", "#eeeeee")
        box(7.05, y, 1.75, 0.58, f"Dec$_{{{i}}}$  linear\n{latent_dim + param_dim} → {w_dim}", "#c9e4c5")
        box(8.75, y, 0.9, 0.5, f"$d_{{{i}}}$\n[{w_dim}]", "#eeeeee")
        ax.add_patch(plt.Circle((9.85, y), 0.2, fc="white", ec="0.25", lw=0.9))
        ax.text(9.85, y, "+", ha="center", va="center", fontsize=10)
        box(10.85, y, 0.9, 0.5, f"$\\hat w_{{{i}}}$\n[{w_dim}]", "#dbe9f6")
        for x0, x1 in ((1.04, 1.33), (2.97, 3.26), (4.24, 4.74), (5.97, 6.13), (7.97, 8.26), (9.24, 9.65), (10.05, 10.37)):
            arrow(x0, y, x1, y)
        # p joins every layer's concat (from the orange bus, into the top of the box)
        ax.plot([bus_x, 5.35], [y + 0.5, y + 0.5], color=orange, lw=0.9)
        arrow(5.35, y + 0.5, 5.35, y + 0.3, colour=orange)
        # the skip connection: ŵ_i = w_i + d_i
        ax.plot([0.55, 0.55, 9.85], [y - 0.3, y - 0.45, y - 0.45], color="0.55", lw=0.8)
        arrow(9.85, y - 0.45, 9.85, y - 0.2, colour="0.55")
    g_y = sum(ys) / len(ys)
    box(12.55, g_y, 1.15, 1.2, "frozen\nStyleGAN\nsynthesis\nG(ŵ)", "#f3d0d7")
    for y in ys:
        arrow(11.34, y, 11.93, g_y + 0.35 * (y - g_y) / max(abs(ys[0] - g_y), 1e-6))
    fig.tight_layout()
    return fig


#: The sweeps of :func:`slider_edits_figure`: (slider, values, label of a value).
SLIDER_SWEEPS: Tuple[Tuple[str, Tuple[float, ...], str], ...] = (
    ("yaw", (-30.0, -15.0, 0.0, 15.0, 30.0), "yaw {:+.0f}°"),
    ("jawOpen", (0.0, 0.25, 0.5, 0.75, 1.0), "jaw {:.2f}"),
    ("light_azimuth", (-60.0, -30.0, 0.0, 30.0, 60.0), "light {:+.0f}°"),
)


def slider_edits_figure(seeds: Sequence[int] = (3, 21), state: Any = None, scale: float = 1.15):
    """Slider edits with the embedded networks: per sweep (pose, expression, light), the 3DMM
    target above the edited portraits of each face. The README's picture and the book's landing
    figure (``python -m stylerig_lite.plotting slider-edits book/figures/slider_edits.png``).

    ``state``: an :class:`~stylerig_lite.editing.EditorState` to use (default: the embedded
    generator, F and RigNets). Each face's sweep is absolute (yaw -30..30, not relative to its own).
    """
    from .editing import EditorState, edit_frames

    if state is None:
        from . import pretrained
        from .morphable import load_face_model

        rigs = {c: pretrained.rignet(c) for c in RIG_COMPONENTS}
        state = EditorState(pretrained.generator(), rigs, pretrained.face_estimator(), load_face_model(progress=False))
    columns = len(SLIDER_SWEEPS[0][1])
    rows, labels, titles = [], [], []
    for slider, values, fmt in SLIDER_SWEEPS:
        block = 0
        for k, seed in enumerate(seeds):
            state.set_seed(seed)
            images, _ = edit_frames(state, slider, values)
            if k == 0 and state.preview is not None:  # the first face's 3DMM targets head the sweep
                targets = []
                size = 2 * images.shape[-1]  # the triangle rasterizer at twice the GAN's size, the centre zoomed
                for value in values:
                    state.set_slider(slider, value)
                    targets.append(state.preview.render_exact(state.target_params(), size)[:, size // 8: -size // 8, size // 8: -size // 8])
                state.reset()
                rows.append(torch.nn.functional.interpolate(torch.stack(targets), size=images.shape[-1], mode="bilinear",
                                                            antialias=True).clamp(0, 1))
                labels.append("3DMM target")
                block += 1
            rows.append(images)
            labels.append(f"seed {seed}")
            block += 1
        titles += [fmt.format(v) for v in values] + [""] * (block - 1) * columns
    fig = image_grid(torch.cat(rows), ncols=columns, titles=titles, row_labels=labels, scale=scale)
    return fig


#: The photoreal generator's sweeps: yaw over the issue's ±20° range (its faces are mostly frontal).
PHOTOREAL_SWEEPS: Tuple[Tuple[str, Tuple[float, ...], str], ...] = (
    ("yaw", (-20.0, -10.0, 0.0, 10.0, 20.0), "yaw {:+.0f}°"),
    ("jawOpen", (0.0, 0.25, 0.5, 0.75, 1.0), "jaw {:.2f}"),
    ("light_azimuth", (-60.0, -30.0, 0.0, 30.0, 60.0), "light {:+.0f}°"),
)

#: The judge's reading shown under each frame of a sweep, and its format.
SWEEP_READINGS = {"yaw": ("yaw", "judge {:+.0f}°"), "jawOpen": ("jaw_open", "judge {:.2f}"),
                  "light_azimuth": ("light_x", "judge x {:+.2f}")}


def judged_sweeps_figure(state: Any, seeds: Sequence[int], sweeps=SLIDER_SWEEPS, judge: Any = None,
                         scale: float = 1.6):
    """Slider sweeps of an editor state with the independent judge's reading under every frame.

    Rows: per sweep, one row per seed, the first row headed by the slider values; under each frame
    the judge's reading (:data:`SWEEP_READINGS`: yaw in degrees, jaw opening, the light's x) of that
    frame, and a second row of the sweep's change ``|frame - first frame|`` (amplified 3x) so that what
    moved, and what should not have, shows. ``judge``: a :class:`~stylerig_lite.judge.Judge` (default:
    built). Returns ``(figure, readings)`` with ``readings[slider][seed]`` the list of judge values.
    """
    import matplotlib.pyplot as plt

    from .editing import edit_frames

    if judge is None:
        from .judge import Judge

        judge = Judge()
    columns = len(sweeps[0][1])
    rows = sum(2 * len(seeds) for _ in sweeps)
    fig, axes = plt.subplots(rows, columns, figsize=(scale * columns, scale * 1.08 * rows), squeeze=False)
    readings: Dict[str, Dict[int, list]] = {}
    r = 0
    for slider, values, fmt in sweeps:
        reading, reading_fmt = SWEEP_READINGS.get(slider, (None, ""))
        readings[slider] = {}
        for k, seed in enumerate(seeds):
            state.set_seed(seed)
            images, _ = edit_frames(state, slider, values)  # [C, 3, S, S] in [0, 1]
            state.reset()
            read = judge.read(images, value_range=(0.0, 1.0))[reading].tolist() if reading else [float("nan")] * columns
            readings[slider][seed] = read
            change = ((images - images[:1]).abs() * 3).clamp(0, 1)
            for c in range(columns):
                for row, picture in ((r, images[c]), (r + 1, change[c])):
                    axes[row, c].imshow(to_numpy_image(picture))
                    axes[row, c].set_xticks([])
                    axes[row, c].set_yticks([])
                if k == 0:
                    axes[r, c].set_title(fmt.format(values[c]), fontsize=8)
                text = "no face" if read[c] != read[c] else reading_fmt.format(read[c])
                axes[r, c].set_xlabel(text, fontsize=7, labelpad=1)
            axes[r, 0].set_ylabel(f"seed {seed}", fontsize=8)
            axes[r + 1, 0].set_ylabel("|change| x3", fontsize=8)
            r += 2
    fig.tight_layout(h_pad=0.4, w_pad=0.2)
    return fig, readings


def photoreal_edits_figure(seeds: Sequence[int] = (4, 12)):
    """The README's and the landing page's photoreal picture: :func:`judged_sweeps_figure` of the embedded
    photoreal generator, latent F and RigNets at 256 px (``python -m stylerig_lite.plotting photoreal-edits
    book/figures/photoreal_edits.png``)."""
    from . import pretrained
    from .editing import EditorState
    from .morphable import load_face_model

    rigs = {c: pretrained.rignet(c, generator="ffhq") for c in pretrained.PHOTOREAL_RIGS}
    state = EditorState(pretrained.photoreal_generator(), rigs, pretrained.latent_f("ffhq"),
                        load_face_model(progress=False), image_size=256)
    fig, _ = judged_sweeps_figure(state, seeds, PHOTOREAL_SWEEPS, scale=1.5)
    return fig


def photo_edit_figure(edit: Any, *, start_image: Optional[torch.Tensor] = None, captions: Optional[dict] = None):
    """Chapter 7's figure of a :class:`~stylerig_lite.photo.PhotoEdit`: the photo with its FFHQ square and
    dlib's points, the aligned crop, (the encoder's guess,) the embedding, the edit and the pasted photo.

    ``start_image``: ``G(E(x))`` ``[1, 3, S, S]`` in [-1, 1], shown when given; ``captions``: panel name ->
    a line under its title (e.g. the measured PSNR). Returns the figure.
    """

    import matplotlib.pyplot as plt

    captions = captions or {}
    size = edit.aligned.crop.shape[-1]
    panels = [("photo", None), ("aligned crop", edit.aligned.crop)]
    if start_image is not None:
        panels.append(("encoder's guess", start_image))
    panels += [("embedding", edit.embedding.image), ("edit", edit.edited)]
    if edit.pasted is not None:
        panels.append(("pasted back", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 2.5))
    for ax, (name, image) in zip(axes, panels):
        ax.set_xticks([])
        ax.set_yticks([])
        if name == "photo":
            ax.imshow(to_numpy_image(edit.photo))
            square = torch.tensor([[0.0, 0], [size, 0], [size, size], [0, size], [0, 0]])
            # crop -> photo pixels (photo.crop_to_photo); imshow puts pixel centres at integers
            corners = affine_points(square, edit.aligned.transform).numpy() - 0.5
            ax.plot(corners[:, 0], corners[:, 1], color="yellow", linewidth=1)
            overlay_landmarks(ax, edit.aligned.photo_landmarks, size=2)
        elif name == "pasted back":
            ax.imshow(to_numpy_image(edit.pasted))
        else:
            ax.imshow(to_numpy_image(((image[0] + 1) / 2).clamp(0, 1)))
        title = name + (f"\n{captions[name]}" if name in captions else "")
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def turn_response_figure(section: Dict[str, Any], names: Sequence[str] = ("yaw", "pitch")):
    """Chapter 7's turn-response panels from ``data/photo_embedding.json``'s ``turn_response`` section.

    One panel per slider: the judged turn against the requested one for every validation face (grey),
    their median (black), the astronaut (red, when measured) and the ideal response (dashed), for the
    way photos are edited (``section['choice']['chosen']``); the other ways' medians are dotted and
    dash-dotted. Returns the figure.
    """
    import matplotlib.pyplot as plt

    chosen = section.get("choice", {}).get("chosen")
    others = [mode for mode in section.get("modes", {}) if mode != chosen]
    label = {"loop": "turn loop", "delta": "rig as a difference", "absolute": "rig applied once"}
    styles = (":", "-.")
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        curve = section["curves"][name]
        requests = curve["requests"]
        for i, row in enumerate(curve["judged_by_face"]):
            ax.plot(requests, row, color="0.75", linewidth=0.8, label="validation faces" if i == 0 else None)
        ax.plot(requests, curve["judged_median"], color="black", linewidth=1.8,
                label=f"their median ({label.get(chosen, 'shipped')})" if chosen else "their median")
        astronaut = section.get("astronaut")
        if astronaut:
            ax.plot(requests, astronaut["judged"][name], color="tab:red", linewidth=1.5, marker="o",
                    markersize=2.5, label="the astronaut")
        for mode, style in zip(others, styles * len(others)):
            ax.plot(requests, section["modes"][mode]["curves"][name]["judged_median"], color="black",
                    linestyle=style, linewidth=1.2, label=f"median, {label.get(mode, mode)}")
            if astronaut and mode in astronaut.get("judged_by_mode", {}):
                ax.plot(requests, astronaut["judged_by_mode"][mode][name], color="tab:red", linestyle=style,
                        linewidth=1.0, label=f"astronaut, {label.get(mode, mode)}")
        ends = [min(requests), max(requests)]
        ax.plot(ends, ends, color="tab:blue", linestyle="--", linewidth=1, label="as asked")
        ax.set_xlabel(f"requested {name} turn (degrees)")
        ax.set_ylabel(f"{name} turn the judge reads (degrees)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stylerig_lite.plotting", description="Write the book's standalone figures.")
    parser.add_argument("figure", choices=["overview", "slider-edits", "photoreal-edits"])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    if args.figure == "photoreal-edits":
        fig = photoreal_edits_figure()
    else:
        fig = overview_figure() if args.figure == "overview" else slider_edits_figure()
    fig.savefig(args.path, dpi=110)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())


def latent_f_curves(logs: dict, *, goal: Optional[float] = None, floors: Optional[dict] = None):
    """The latent F's validation curves: landmark NME and photometric error against training step.

    ``logs``: name -> a shipped training log (``training/latent_f_<generator>.json``: ``history``
    entries with ``step`` and ``validation``). ``goal``: a horizontal line on the NME panel;
    ``floors``: name -> NME of a reference reader (dotted, same colour). Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2))
    for k, (name, log) in enumerate(logs.items()):
        colour = f"C{k}"
        rows = [h for h in log["history"] if "validation" in h]
        steps = [h["step"] for h in rows]
        axes[0].plot(steps, [h["validation"]["landmark_nme_median"] for h in rows], color=colour,
                     label=f"{name}: 66 points")
        axes[0].plot(steps, [h["validation"]["landmark_nme_inner_median"] for h in rows], color=colour,
                     linestyle="--", label=f"{name}: without the contour")
        axes[1].plot(steps, [h["validation"]["photometric_mae_255"] for h in rows], color=colour, label=name)
        if floors and name in floors:
            axes[0].axhline(floors[name], color=colour, linestyle=":", label=f"{name}: image F (reference)")
    if goal is not None:
        axes[0].axhline(goal, color="black", linewidth=0.8, label=f"goal {goal}")
    axes[0].set_ylabel("landmark error / inter-ocular distance\n(median, validation split)")
    axes[1].set_ylabel("colour error on the face mask\n(mean, 8-bit units)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def rignet_curves(history: Sequence[Dict[str, float]], *, fig=None, label: Optional[str] = None, **style: Any):
    """A RigNet run's loss curves against the training step, in three panels: the render losses (total,
    editing, consistency), the reconstruction loss and F's target error (mean |Δp|).

    ``history``: the entries of ``train-rignet``'s log (``<out>.log.jsonl``, or a shipped one:
    :func:`stylerig_lite.pretrained.training_log`), each with ``step``, ``loss``, ``edit``, ``consist``,
    ``rec`` and ``target_error``; a term a run did not log is skipped. ``fig``: a figure from an earlier
    call, to draw a second run on the same axes (``label`` and ``style``, e.g. ``linestyle="--"``, tell
    them apart). Returns the figure.
    """
    import matplotlib.pyplot as plt

    if not len(history):
        raise ValueError("rignet_curves needs at least one log entry")
    if fig is None:
        fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
        for ax, title in zip(axes, ["render losses", "reconstruction loss", "target error (F, mean |Δp|)"]):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
    axes = fig.axes
    steps = [entry["step"] for entry in history]
    prefix = f"{label}: " if label else ""
    panels = [(0, "loss", "total", "C0"), (0, "edit", "editing", "C1"), (0, "consist", "consistency", "C2"),
              (1, "rec", "reconstruction", "C3"), (2, "target_error", "target error", "C4")]
    for panel, key, name, colour in panels:
        if key in history[0]:
            axes[panel].plot(steps, [entry[key] for entry in history], color=colour, label=prefix + name, **style)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------
# Chapters 3 and 4 (notebooks/03_differentiable_rendering.ipynb,
# notebooks/04_face_reconstruction.ipynb): the renderer's and the fit's figures.


def rasterization_figure(image: torch.Tensor, uv: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor,
                         pixel: Tuple[int, int], bary: torch.Tensor, *, colours: Sequence[str] = ("tab:red", "tab:blue",
                                                                                                   "tab:orange")):
    """A toy rasterization: pixel centres, the triangle that wins each, and one pixel's barycentrics.

    ``image [3, H, W]`` in [0, 1], the render; ``uv [V, 2]`` the projected vertices (pixels, origin at the
    top-left corner); ``faces [T, 3]`` vertex indices (T at most ``len(colours)``); ``face_index [H, W]``
    the winning triangle per pixel (-1: background); ``pixel`` the (row, column) whose barycentric
    coordinates ``bary [3]`` (weights of its triangle's corners) are drawn as lines to the corners.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    height, width = face_index.shape
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    ax.imshow(to_numpy_image(image), extent=(0, width, height, 0), interpolation="nearest")
    for k, triangle in enumerate(faces.tolist()):
        ax.add_patch(plt.Polygon(uv[triangle].numpy(), fill=False, edgecolor=colours[k], lw=2))
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    index = face_index.numpy()
    for k in range(len(faces)):
        ax.scatter(jj[index == k], ii[index == k], s=22, c=colours[k], edgecolors="k", linewidths=0.5)
    ax.scatter(jj[index < 0], ii[index < 0], s=22, facecolors="none", edgecolors="grey", linewidths=0.8)
    row, col = pixel
    centre = np.array([col + 0.5, row + 0.5])
    corners = uv[faces[int(face_index[row, col])]].numpy()  # [3, 2]
    for k, (b, corner) in enumerate(zip(bary.tolist(), corners)):
        ax.plot([centre[0], corner[0]], [centre[1], corner[1]], "k-", lw=0.7)
        ax.text(*(0.3 * centre + 0.7 * corner), f"$b_{k}$={b:.2f}", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.15", fc="w", ec="none", alpha=0.85))
    ax.scatter([centre[0]], [centre[1]], s=90, marker="*", c="w", edgecolors="k", linewidths=0.8, zorder=5)
    ax.set_xticks(range(0, width + 1, 2))
    ax.set_yticks(range(0, height + 1, 2))
    ax.grid(color="w", lw=0.3, alpha=0.5)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xlabel("u (pixels, to the right)")
    ax.set_ylabel("v (pixels, down)")
    ax.set_title("pixel centres, winning triangles, barycentrics", fontsize=9)
    return fig


def triangle_zoom_figure(image: torch.Tensor, uv: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor,
                         rows: slice, cols: slice):
    """A render beside a zoom on a window of it with the mesh's projected triangles.

    ``image [3, S, S]`` in [0, 1]; ``uv [V, 2]`` projected vertices (pixels); ``faces [F, 3]`` the
    rendered triangles; ``face_index [S, S]`` the index into ``faces`` that wins each pixel (-1: none);
    ``rows``, ``cols`` the window (pixel slices). In the zoom, every triangle near the window is grey,
    those that win a pixel of the window black, and pixel centres red. Returns the figure.
    """
    import matplotlib.pyplot as plt

    size = image.shape[-1]
    winners = face_index[rows, cols].unique()
    winners = winners[winners >= 0]
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6))
    axes[0].imshow(to_numpy_image(image), extent=(0, size, size, 0))
    axes[0].add_patch(plt.Rectangle((cols.start, rows.start), cols.stop - cols.start, rows.stop - rows.start,
                                    fill=False, ec="r", lw=1.5))
    axes[0].set_title(f"{size} px render (red: the zoomed window)", fontsize=9)
    axes[0].axis("off")
    axes[1].imshow(to_numpy_image(image), extent=(0, size, size, 0), interpolation="nearest")
    centroids = uv[faces].mean(dim=1)  # [F, 2]
    near = ((centroids[:, 0] > cols.start - 1) & (centroids[:, 0] < cols.stop + 1)
            & (centroids[:, 1] > rows.start - 1) & (centroids[:, 1] < rows.stop + 1))
    for triangle in faces[near]:
        axes[1].add_patch(plt.Polygon(uv[triangle].numpy(), fill=False, edgecolor="0.35", lw=0.3))
    for triangle in faces[winners]:
        axes[1].add_patch(plt.Polygon(uv[triangle].numpy(), fill=False, edgecolor="k", lw=1.0))
    jj, ii = np.meshgrid(np.arange(cols.start, cols.stop) + 0.5, np.arange(rows.start, rows.stop) + 0.5)
    axes[1].scatter(jj, ii, s=6, c="r")
    axes[1].set_xlim(cols.start, cols.stop)
    axes[1].set_ylim(rows.stop, rows.start)
    axes[1].set_xlabel("u (pixels)")
    axes[1].set_ylabel("v (pixels)")
    axes[1].set_title("zoom: all triangles (grey), the ones that win a pixel (black)", fontsize=8)
    fig.tight_layout()
    return fig


#: (band l, order m, a polynomial proportional to the function) of the nine real SH functions, in the order of
#: :func:`~stylerig_lite.shading.sh_basis_raw`.
SH_FUNCTIONS: Tuple[Tuple[int, int, str], ...] = (
    (0, 0, "1"), (1, -1, "y"), (1, 0, "z"), (1, 1, "x"), (2, -2, "xy"), (2, -1, "yz"), (2, 0, "3z²−1"),
    (2, 1, "xz"), (2, 2, "x²−y²"),
)


def sh_basis_figure(basis: torch.Tensor, inside: torch.Tensor):
    """The nine spherical-harmonics functions on a sphere, in a pyramid of bands (rows) and orders (columns).

    ``basis [R, R, 9]``: the functions at the normals of a sphere seen by the camera; ``inside [R, R]``
    (bool): the pixels on the sphere. Red is positive, blue negative (a shared scale). Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 5, figsize=(7.5, 4.8))
    for ax in axes.flat:
        ax.axis("off")
    for k, (l, m, label) in enumerate(SH_FUNCTIONS):
        ax = axes[l, m + 2]
        ax.imshow(np.where(inside.numpy(), basis[..., k].numpy(), np.nan), cmap="RdBu_r", vmin=-1.1, vmax=1.1)
        ax.set_title(f"$Y_{k}$  (l={l}, m={m:+d})\n∝ {label}", fontsize=8)
    fig.tight_layout()
    return fig


def sphere_shading_figure(panels: Sequence[Tuple[str, torch.Tensor, str, float, float]], inside: torch.Tensor):
    """Shadings of a sphere side by side, with a colour bar for the last one.

    ``panels``: (title, values ``[R, R]``, colour map, lowest, highest) per panel; ``inside [R, R]``
    (bool) the pixels on the sphere (the rest is blank). Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * len(panels), 2.6), squeeze=False)
    for ax, (title, values, cmap, lo, hi) in zip(axes[0], panels):
        shown = ax.imshow(np.where(inside.numpy(), values.numpy(), np.nan), cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[0, -1], fraction=0.046)
    return fig


def loss_sweep_figure(panels: Sequence[Tuple[str, Any, Any]], value0: float, slope: float, *,
                      area: Optional[Tuple[Any, Any]] = None,
                      xlabel: str = "yaw offset from the +6° error (degrees)", ylabel: str = "photometric loss"):
    """A loss swept along one parameter, with the autograd tangent at offset 0; one panel per sweep.

    ``panels``: (title, offsets ``[K]``, losses ``[K]``) per panel; ``value0`` the loss at offset 0 and
    ``slope`` its derivative per unit offset (autograd), drawn as a red tangent; ``area``: (offsets, face-mask
    pixels) drawn as a grey step curve on a right-hand axis of the last panel. Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.75 * len(panels), 3), squeeze=False)
    axes = axes[0]
    for ax, (title, offsets, values) in zip(axes, panels):
        offsets = np.asarray(offsets, dtype=float)
        ax.plot(offsets, np.asarray(values, dtype=float), ".-", label=ylabel)
        ax.plot(offsets, value0 + slope * offsets, "r-", lw=0.8, label="autograd tangent")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    if area is not None:
        right = axes[-1].twinx()
        right.step(np.asarray(area[0], dtype=float), np.asarray(area[1], dtype=float), where="mid", color="0.5",
                   lw=1)
        right.set_ylabel("face-mask pixels", color="0.4")
    fig.tight_layout()
    return fig


def images_with_difference(images: Sequence[torch.Tensor], titles: Sequence[str], difference: torch.Tensor, *,
                           difference_title: str, landmarks: Optional[Sequence[torch.Tensor]] = None,
                           vmax: Optional[float] = None, colorbar_format: Optional[str] = None):
    """Images in a row, then a difference map with a colour bar.

    ``images``: ``[3, H, W]`` tensors in [0, 1] with one title each; ``landmarks``: ``[68, 2]`` pixels per
    image, drawn in lime; ``difference [H, W]`` (e.g. the largest absolute RGB difference, 0..1) drawn in
    magma from 0 to ``vmax`` (default: its maximum). Returns the figure.
    """
    import matplotlib.pyplot as plt

    n = len(images) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8))
    for k, (image, title) in enumerate(zip(images, titles)):
        axes[k].imshow(to_numpy_image(image))
        if landmarks is not None:
            overlay_landmarks(axes[k], landmarks[k], size=2)
        axes[k].set_title(title, fontsize=9)
    difference = difference.detach().float().cpu()
    top = float(difference.max()) if vmax is None else vmax
    shown = axes[-1].imshow(difference.numpy(), cmap="magma", vmin=0, vmax=max(top, 1e-6))
    axes[-1].set_title(difference_title, fontsize=9)
    fig.colorbar(shown, ax=axes[-1], fraction=0.046, format=colorbar_format)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


#: The curves of :func:`fit_history_figure`: a fit's history key and its legend.
FIT_CURVES = {"total": "total", "photometric": "photometric", "landmark": "landmark (before ×λ_land)",
              "regulariser": "regulariser"}


def fit_history_figure(history: Dict[str, Sequence[float]]):
    """The loss terms of an analysis-by-synthesis fit against the Adam step, on a log scale.

    ``history``: :attr:`~stylerig_lite.fitting.FitResult.history` (lists of per-step batch means for
    :data:`FIT_CURVES`, and ``stage``: 0 while only pose and light move, then 1). Zeros (the prior, while
    the shape is still the mean's) are left out; a dashed line marks the switch of stage. Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3))
    for key, label in FIT_CURVES.items():
        values = np.asarray(history[key], dtype=float)
        ax.plot(np.where(values > 0, values, np.nan), label=label)
    if 1 in history["stage"]:
        switch = list(history["stage"]).index(1)
        ax.axvline(switch, color="k", lw=0.8, ls="--")
        ax.text(switch + 2, 0.3, "all components move", fontsize=8)
    ax.text(2, 0.3, "pose, light", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("loss (batch mean)")
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 0.12))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def estimate_scatter_figure(truth: torch.Tensor, estimate: torch.Tensor, labels: Sequence[str], *,
                            ylabel: str = "F's estimate"):
    """One scatter plot per quantity: an estimator's reading against the truth, the diagonal, and r.

    ``truth``, ``estimate`` ``[N, K]``: K quantities over N images, in the units of ``labels`` (K of
    them). Each panel's title gives the label and the correlation r of the two columns. Returns the figure.
    """
    import matplotlib.pyplot as plt

    k = len(labels)
    fig, axes = plt.subplots(1, k, figsize=(2.5 * k, 2.7), squeeze=False)
    for j, (ax, label) in enumerate(zip(axes[0], labels)):
        x, y = truth[:, j].float(), estimate[:, j].float()
        r = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
        ax.scatter(x.numpy(), y.numpy(), s=5, alpha=0.6)
        lo, hi = float(x.min()), float(x.max())
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.7)
        ax.set_title(f"{label}\nr = {r:.2f}", fontsize=9)
        ax.set_xlabel("true", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(ylabel, fontsize=8)
    fig.tight_layout()
    return fig
