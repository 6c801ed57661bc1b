#!/usr/bin/env python3
"""Build an ICT-FaceKit asset mirror (the layout of ../shared/assets) from the registry.

Used by .github/workflows/ci.yml: GitHub's runners have no shared asset folder, and the
tests read the mirror itself (``ict-facekit/FaceXModel/*.obj.gz``, ``SHA256SUMS``), not
only the package's cache. Every registry file is fetched with ``stylerig_lite.assets``
(from the pinned upstream commit, checked against its SHA-256), then written to
``DEST/<mirror_path>`` as the shared mirror stores them: the ``.obj`` meshes
gzip-compressed (``<name>.obj.gz``), the small files (``vertex_indices.json``, the
material, the licence) uncompressed, because the face-model converter reads
``vertex_indices.json`` from the folder directly. Finally ``DEST/ict-facekit/SHA256SUMS``
lists the ``FaceXModel/`` files as upstream serves them.

Needs only the standard library and this checkout::

    PYTHONPATH=. python .ci/asset_mirror.py ~/.cache/stylerig-lite/mirror

Files already in DEST are kept (delete DEST to rebuild it). The downloads go to a
temporary cache that is removed afterwards, unless ``--cache-dir`` names one.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

from stylerig_lite import assets

SUMS_FOLDER = "ict-facekit"  # SHA256SUMS lives here and lists paths relative to it
SUMS_PREFIX = "ict-facekit/FaceXModel/"


def build_mirror(
    dest: Union[str, Path],
    *,
    registry: Optional[assets.Registry] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    source_mirror: Union[str, Path, bool, None] = False,
    progress: bool = False,
) -> list[Path]:
    """Write every registry file into ``dest`` in mirror layout; returns the files written.

    ``source_mirror``: where ``assets.fetch`` may look before downloading (``False``:
    download from upstream, ``None``: ``$STYLERIG_LITE_ASSET_MIRROR``).
    """
    dest = Path(dest).expanduser().resolve()
    registry = registry if registry is not None else assets.default_registry()
    if source_mirror not in (None, False) and Path(source_mirror).expanduser().resolve() == dest:
        raise ValueError(f"the source mirror and the destination are the same folder: {dest}")
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="stylerig-mirror-cache-") as scratch:
        cache = Path(cache_dir) if cache_dir is not None else Path(scratch)
        for key, asset in registry.items():
            compress = key.endswith(".obj")
            target = dest / asset.mirror_path
            if not compress and target.suffix == ".gz":
                target = target.with_suffix("")
            if target.is_file():
                continue
            source = assets.fetch(key, registry=registry, cache_dir=cache, mirror_dir=source_mirror,
                                  offline=False, progress=progress)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            if compress:
                with open(source, "rb") as src, gzip.open(partial, "wb") as out:
                    shutil.copyfileobj(src, out)
            else:
                shutil.copyfile(source, partial)
            os.replace(partial, target)
            written.append(target)
            if cache_dir is None:
                source.unlink()  # keep the scratch cache small: the mirror holds the file now
    sums = [f"{a.sha256}  {key[len(SUMS_FOLDER) + 1:]}  {a.size}"
            for key, a in sorted(registry.items()) if key.startswith(SUMS_PREFIX)]
    if sums:
        path = dest / SUMS_FOLDER / "SHA256SUMS"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(sums) + "\n", encoding="utf-8")
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="the mirror folder to fill (set STYLERIG_LITE_ASSET_MIRROR to it)")
    parser.add_argument("--cache-dir", help="keep the downloaded files in this cache (default: a temporary one)")
    parser.add_argument("--from-mirror", metavar="DIR",
                        help="copy from this existing mirror instead of downloading from upstream")
    args = parser.parse_args(argv)
    try:
        written = build_mirror(args.dest, cache_dir=args.cache_dir, source_mirror=args.from_mirror or False,
                               progress=sys.stderr.isatty())
    except (assets.AssetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"asset mirror {args.dest}: {len(written)} files written, "
          f"{len(assets.default_registry()) - len(written)} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
