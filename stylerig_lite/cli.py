"""Command-line entry point: ``stylerig-lite <command> [options]``.

Each command is one function registered in ``COMMANDS`` with the function that
adds its arguments; ``main`` only parses and dispatches, so a new command is a
new entry in the table and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
from typing import Sequence

from . import __version__

__all__ = [
    "add_arguments",
    "build_parser",
    "COMMANDS",
    "main",
    "run_from_args",
]


def _run_info(args: argparse.Namespace) -> int:
    """Print what a bug report needs: versions, optional backends, asset settings."""
    del args
    import torch

    has_pytorch3d = importlib.util.find_spec("pytorch3d") is not None
    rows = [
        ("stylerig-lite", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", f"{torch.__version__} (cuda available: {torch.cuda.is_available()})"),
        ("pytorch3d", "installed" if has_pytorch3d else "not installed (optional)"),
    ]
    for name in ("STYLERIG_LITE_ASSET_MIRROR", "STYLERIG_LITE_CACHE", "STYLERIG_LITE_QUICK"):
        rows.append((name, os.environ.get(name, "(unset)")))
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    return 0


#: name -> (help line, module). Every command module has the same shape: ``add_arguments(parser)``
#: and ``run_from_args(args) -> exit status``. Modules are imported when their command is built, so
#: ``stylerig-lite info`` works even when a training module cannot import.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("print versions, optional backends and asset settings", "stylerig_lite.cli"),
    "train-gan": ("train (or resume) the StyleGAN2 on FaceWorld renders", "stylerig_lite.train_gan"),
    "train-f": ("train F, the image -> 3DMM parameter network, on cached FaceWorld renders", "stylerig_lite.train_f"),
    "make-corpus": ("sample the (w, G(w), F(G(w))) corpus RigNet trains on, into resumable shards", "stylerig_lite.corpus"),
    "train-latent-f": ("train (or resume) the latent F, W+ -> 3DMM parameters, self-supervised on a corpus",
                       "stylerig_lite.train_latent_f"),
    "evaluate-f": ("score a latent F on held-out pairs: landmark NME, photometric error, yaw agreement",
                   "stylerig_lite.evaluate_f"),
    "train-rignet": ("train (or resume) a RigNet for pose, expression or light", "stylerig_lite.train_rignet"),
    "judge": ("the independent judge: calibrate it, or report its accuracy against exact labels and F",
              "stylerig_lite.judge"),
    "train-encoder": ("train (or resume) the photo encoder, aligned face crop -> w, on a photoreal corpus",
                      "stylerig_lite.train_encoder"),
    "edit-photo": ("edit a photograph: align the face, embed it into W+, apply the photoreal RigNets",
                   "stylerig_lite.photo"),
    "evaluate": ("score editing methods (target error and preservation, judged by E) or the generator's quality",
                 "stylerig_lite.evaluate"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``info`` takes no options."""
    del parser


def run_from_args(args: argparse.Namespace) -> int:
    """``info``: print what a bug report needs (versions, optional backends, asset settings)."""
    return _run_info(args)


class _LazyCommand:
    """``add_arguments`` / ``run_from_args`` of a command's module, imported on first use."""

    def __init__(self, module: str):
        self.module = module

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        importlib.import_module(self.module).add_arguments(parser)

    def __call__(self, args: argparse.Namespace) -> int:
        return importlib.import_module(self.module).run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylerig-lite",
        description="StyleRig Lite: rig a StyleGAN with a 3D morphable face model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_line, module) in COMMANDS.items():
        command = _LazyCommand(module)
        subparser = subparsers.add_parser(name, help=help_line, description=help_line)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
