"""Git on a runner, with nothing of the repository's able to configure it.

A repository is hostile (docs/security.md). Git reads configuration from the
system (``/etc/gitconfig``), the user (``$HOME/.gitconfig``, ``$XDG_CONFIG_HOME/
git/config``), the repository (``.git/config``, includes) and the command line,
and some of it runs programs (``core.fsmonitor``, ``core.hooksPath``, filters,
``trace2.*`` writes files). On a runner:

- the system and global files are switched off (``GIT_CONFIG_SYSTEM`` and
  ``GIT_CONFIG_GLOBAL`` point at ``/dev/null``), ``HOME`` and
  ``XDG_CONFIG_HOME`` are a private empty directory that is never the
  checkout, and the environment is built from nothing but ``PATH``;
- the git directory is made by the runner (``git init --bare --template=``:
  no hooks, no template config) and kept *outside* the work tree, so the
  checkout has no ``.git`` at all and a commit cannot plant one;
- every command runs with ``-c`` settings that disable hooks, the fsmonitor,
  submodules and replace objects, whatever a later config might say.
"""

from __future__ import annotations

import os

# Settings given with -c on every git command the runner starts: the command line
# wins over every config file git might still read.
SAFE_CONFIG: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.symlinks=true",
    "core.protectNTFS=true",
    "core.protectHFS=true",
    "core.sparseCheckout=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "protocol.file.allow=never",
    "protocol.ext.allow=never",
    "credential.helper=",
)


def base_env(home: str) -> dict[str, str]:
    """The whole environment of a runner's git process; ``home`` is private and empty."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": home,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_SYSTEM": "/dev/null",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",
        "LC_ALL": "C",
    }


def args(*command: str) -> list[str]:
    """``git -c ... <command>``: the argument list of one hardened git command."""
    out = ["git"]
    for setting in SAFE_CONFIG:
        out += ["-c", setting]
    return [*out, *command]


def git_dir(tree: str) -> str:
    """Where the runner keeps the git directory of the work tree ``tree``."""
    return os.path.normpath(tree) + ".git"
