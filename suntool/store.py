"""The shared-half store: one copy of each shared half, keyed by its fingerprint.

Layout: `<root>/<sha256 hex>/` is an ordinary HF checkpoint directory. Artifacts hold their
shared half as hardlinks to the store's files (so ten task artifacts cost one copy on
disk and each half still loads with `from_pretrained`), or, where hardlinks are impossible
(another filesystem), as a reference: the manifest's `path` is the store dir itself.

The root is `$SUNTOOL_STORE`, else `$XDG_DATA_HOME/suntool/store` (`~/.local/share/...`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from suntool.atomic import atomic_dir


def store_root(override: Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    if os.environ.get("SUNTOOL_STORE"):
        return Path(os.environ["SUNTOOL_STORE"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "suntool" / "store"


def store_path(fingerprint: str, root: Path | None = None) -> Path:
    return store_root(root) / fingerprint.removeprefix("sha256:")


def put(checkpoint_dir: Path, fingerprint: str, root: Path | None = None) -> Path:
    """Store a copy of `checkpoint_dir` under its fingerprint (a no-op if already stored)."""
    target = store_path(fingerprint, root)
    if (target / "config.json").is_file():
        return target
    with atomic_dir(target, replace=True) as tmp:
        for item in Path(checkpoint_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
    return target


def link_into(stored: Path, dest: Path) -> bool:
    """Fill the new directory `dest` with hardlinks to `stored`'s files; False if impossible."""
    dest.mkdir(parents=True, exist_ok=False)
    try:
        for item in Path(stored).iterdir():
            if item.is_file():
                os.link(item, dest / item.name)
    except OSError:
        shutil.rmtree(dest, ignore_errors=True)
        return False
    return True


def disk_usage(paths: list[Path]) -> int:
    """Bytes on disk of all files under `paths`, counting each hardlinked inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                stat = os.stat(os.path.join(dirpath, name))
                key = (stat.st_dev, stat.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += stat.st_size
    return total
