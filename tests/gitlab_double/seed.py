"""Load a seed file (format in the package docstring) into a GitLabDouble."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .double import GitLabDouble


def _files(project: dict[str, Any], base: Path) -> dict[str, str | bytes | None]:
    files: dict[str, str | bytes | None] = {}
    if project.get("files_dir"):
        root = (base / project["files_dir"]).resolve()
        for path in sorted(root.rglob("*")):
            if path.is_file() and ".git" not in path.relative_to(root).parts:
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    files.update(project.get("files") or {})
    return files


def load_seed(gl: GitLabDouble, seed_file: str | Path) -> None:
    seed_path = Path(seed_file)
    seed = json.loads(seed_path.read_text())
    base = seed_path.parent
    for user in seed.get("users", []):
        gl.add_user(user["username"], password=user.get("password"), name=user.get("name"),
                    email=user.get("email"))
    for group in seed.get("groups", []):
        gl.add_group(group["path"], visibility=group.get("visibility", "private"),
                     name=group.get("name"), description=group.get("description", ""))
    for project in seed.get("projects", []):
        path = project["path"]
        gl.add_project(path, files=_files(project, base) or None,
                       default_branch=project.get("default_branch", "main"),
                       visibility=project.get("visibility", "private"),
                       description=project.get("description", ""), name=project.get("name"))
        for branch, files in (project.get("branches") or {}).items():
            gl.commit(path, branch, files, message=f"Add {branch}")
        for tag, ref in (project.get("tags") or {}).items():
            gl.create_tag(path, tag, ref=ref)
    for member in seed.get("members", []):
        gl.add_member(member["path"], member["user"], int(member["access_level"]))
    for app in seed.get("oauth_apps", []):
        gl.add_oauth_app(app["client_id"], app["client_secret"], app["redirect_uri"],
                         scopes=app.get("scopes", ["api", "read_user"]),
                         name=app.get("name", "Booklab"))
