"""Bad checkpoint files (empty, truncated, random bytes) for the tests of every checkpoint loader."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

#: What each kind of bad file is called in :func:`stylerig_lite.io_utils.load_checkpoint_file`'s message.
BAD_FILE_WORDS = {"empty": "is empty", "truncated": "truncated or corrupt", "random bytes": "not a PyTorch checkpoint"}


def bad_checkpoints(folder: Path, good: Path) -> Dict[str, Path]:
    """``{kind: path}`` in ``folder``: an empty file, the first half of ``good`` (a real checkpoint), random bytes."""
    data = Path(good).read_bytes()
    contents = {"empty": b"", "truncated": data[: len(data) // 2], "random bytes": np.random.default_rng(0).bytes(4096)}
    out = {}
    for kind, content in contents.items():
        path = Path(folder) / f"bad_{kind.replace(' ', '_')}.pt"
        path.write_bytes(content)
        out[kind] = path
    return out
