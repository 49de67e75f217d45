"""The checked-out commit as untrusted data: symlinks checked, build contexts made.

Git stores three kinds of entry a checkout can contain: regular files,
executable files and symbolic links (submodules are not fetched). Only links
can make a reader on the runner host open something outside the checkout
(``apt.txt -> /etc/shadow``, ``binder -> /``, ``requirements.txt -> /dev/zero``),
so before anything on the host reads the checkout — Booklab's own environment
hash, repo2docker, the archive copied into the container — every link is
resolved and must stay inside it. A repository with a link that leaves it
fails with a message naming the link.
"""

from __future__ import annotations

import os
import shutil

from ..exceptions import BuildFailed

SYMLINK = "120000"


def links(entries: dict[str, str]) -> list[str]:
    """Paths of the symbolic links among ``path -> "mode sha"`` tree entries."""
    return sorted(p for p, meta in entries.items() if meta.split()[0] == SYMLINK)


def check_links(root: str, entries: dict[str, str]) -> None:
    """Raise BuildFailed unless every symlink in the checkout ``root`` resolves inside it."""
    top = os.path.realpath(root)
    for path in links(entries):
        where = os.path.join(top, path)
        target = os.readlink(where)
        resolved = os.path.realpath(where)
        if resolved != top and not resolved.startswith(top + os.sep):
            raise BuildFailed(
                f"The repository's symbolic link {path!r} points outside the repository "
                f"(to {target!r}): Booklab reads nothing outside a repository on a runner. "
                "Replace the link with the file itself, or point it at a file in the "
                "repository.")


def build_context(root: str, dest: str, files: tuple[str, ...] | None) -> str:
    """The directory repo2docker builds from.

    ``files`` None: the whole checkout (already without ``.git``). Otherwise a new
    directory ``dest`` holding only those files (the environment files an image is
    keyed on), so that the image holds nothing of the commit that built it beyond
    what its name covers; the launch copies the commit's other files in.
    """
    if files is None:
        return root
    os.makedirs(dest, mode=0o755)
    for path in files:
        source, target = os.path.join(root, path), os.path.join(dest, path)
        if os.path.islink(source):  # imagekey.select keys a linked env file on the whole tree
            raise BuildFailed(f"internal: environment file {path!r} is a link")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)
    return dest
