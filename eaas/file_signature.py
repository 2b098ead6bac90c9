"""What changes when a watched file is replaced or rewritten: its stat, followed through symlinks.

Kubernetes updates a mounted Secret by swapping the `..data` symlink to a new directory, so a file's path
stays the same while the file it leads to is new: stat() follows the links and sees a new inode.
Comparing signatures costs one stat per file, cheap enough to do on every use.
"""

from __future__ import annotations

from pathlib import Path


def stat_signature(paths: list[Path]) -> tuple:
    """(inode, mtime_ns, size) per path, None for one that cannot be stat'ed (mid-swap or removed)."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)
