"""Hide papermill's injected-parameters cell in executed notebooks: ``python tests/hide_injected.py NB...``.

``make book`` runs every chapter with papermill (``-p quick True``), which inserts a cell tagged
``injected-parameters`` after the chapter's own (hidden) ``parameters`` cell. That cell is plumbing,
not content: tag it ``remove-cell`` so that Jupyter Book leaves it out of the HTML.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def hide_injected(path: Path) -> int:
    """Tag the injected cells of the notebook at ``path`` ``remove-cell``; returns how many were tagged."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    tagged = 0
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            tagged += 1
    if tagged:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return tagged


if __name__ == "__main__":
    for name in sys.argv[1:]:
        hide_injected(Path(name))
