"""Files written whole or not at all: a crash or a full disk never leaves half a file behind.

Below every layer (data, core, eval, cli all use it), like `vlp.seeding`.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a written file to disk, so a rename after it publishes complete contents."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling, flush it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
