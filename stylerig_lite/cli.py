"""Command-line entry point: ``stylerig-lite <command> [options]``.

Each command is one function registered in ``COMMANDS`` with the function that
adds its arguments; ``main`` only parses and dispatches, so a new command is a
new entry in the table and nothing else.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
from typing import Callable, Sequence

from . import __version__


def _add_info_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # `info` takes no options.


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


# name -> (help line, add arguments, run). run returns the process exit status.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "info": ("print versions, optional backends and asset settings", _add_info_arguments, _run_info),
}


# -- train-f: the face reconstruction network F (code in stylerig_lite/train_f.py) -------------
# Imported lazily so that `stylerig-lite info` works even when a training module cannot import.
def _add_train_f_arguments(parser: argparse.ArgumentParser) -> None:
    from .train_f import add_arguments

    add_arguments(parser)


def _run_train_f(args: argparse.Namespace) -> int:
    from .train_f import run_from_args

    return run_from_args(args)


COMMANDS["train-f"] = ("train F, the image -> 3DMM parameter network, on cached FaceWorld renders", _add_train_f_arguments, _run_train_f)
# -- end train-f ------------------------------------------------------------------------------


# -- train-gan: the StyleGAN2 (code in stylerig_lite/train_gan.py) -----------------------------
def _add_train_gan_arguments(parser: argparse.ArgumentParser) -> None:
    from .train_gan import build_arg_parser

    build_arg_parser(parser)


def _run_train_gan(args: argparse.Namespace) -> int:
    from .train_gan import run_from_args

    return run_from_args(args)


COMMANDS["train-gan"] = ("train (or resume) the StyleGAN2 on FaceWorld renders", _add_train_gan_arguments, _run_train_gan)
# -- end train-gan ----------------------------------------------------------------------------


# -- make-corpus: the (w, I_w) corpus with F's estimates (code in stylerig_lite/corpus.py) -----
def _add_make_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    from .corpus import add_arguments

    add_arguments(parser)


def _run_make_corpus(args: argparse.Namespace) -> int:
    from .corpus import run_from_args

    return run_from_args(args)


COMMANDS["make-corpus"] = ("sample the (w, G(w), F(G(w))) corpus RigNet trains on, into resumable shards", _add_make_corpus_arguments, _run_make_corpus)
# -- end make-corpus --------------------------------------------------------------------------


# -- evaluate: control metrics of editing methods (code in stylerig_lite/evaluate.py) ----------
def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluate import add_arguments

    add_arguments(parser)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import run_from_args

    return run_from_args(args)


COMMANDS["evaluate"] = ("score editing methods (target error and preservation, judged by E) or the generator's quality", _add_evaluate_arguments, _run_evaluate)
# -- end evaluate -----------------------------------------------------------------------------


# -- train-rignet: one RigNet per component (code in stylerig_lite/train_rignet.py) ------------
def _add_train_rignet_arguments(parser: argparse.ArgumentParser) -> None:
    from .train_rignet import add_arguments

    add_arguments(parser)


def _run_train_rignet(args: argparse.Namespace) -> int:
    from .train_rignet import run_from_args

    return run_from_args(args)


COMMANDS["train-rignet"] = ("train (or resume) a RigNet for pose, expression or illumination", _add_train_rignet_arguments, _run_train_rignet)
# -- end train-rignet -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylerig-lite",
        description="StyleRig Lite: rig a StyleGAN with a 3D morphable face model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_line, add_arguments, run) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_line, description=help_line)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
