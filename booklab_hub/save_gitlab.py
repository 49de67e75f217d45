"""The GitLab calls of "Save to GitLab", with the user's own token (python-gitlab in a
worker thread, as every call of :class:`booklab_spawner.gitlab_api.GitLabClient`)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from booklab_spawner.exceptions import GitLabError
from booklab_spawner.gitlab_api import PAGE, GitLabClient, _pid

_READ = {"max_retries": 2}
_WRITE = {"max_retries": 2, "retry_transient_errors": False}  # a commit is never resent
MAX_TREE = 100_000  # entries of one tree read

REFUSED = ("GitLab refused the save ({detail}): your role on the project cannot push to "
           "this branch (Developer or higher is needed, Maintainer for a protected branch). "
           "Save to another branch, or download your changes")


class SaveGitLab(GitLabClient):
    async def tree(self, project_id: int | str, sha: str) -> dict[str, tuple[str, str]]:
        """path -> (mode, blob sha) of every file at commit ``sha``."""
        return await asyncio.to_thread(self._tree, project_id, sha)

    def _tree(self, project_id: int | str, sha: str) -> dict[str, tuple[str, str]]:
        with self._session("The launched commit is no longer in the project") as gl:
            listing = gl.projects.get(_pid(project_id), lazy=True).repository_tree(
                ref=sha, recursive=True, iterator=True, per_page=PAGE, **_READ)
            tree = {}
            for i, entry in enumerate(listing):
                if i >= MAX_TREE:
                    raise GitLabError("The project has too many files to save", 413)
                if entry.get("type") == "blob":
                    tree[str(entry["path"])] = (str(entry["mode"]), str(entry["id"]))
            return tree

    async def branch(self, project_id: int | str, name: str) -> dict | None:
        """The branch, None if there is none."""
        return await asyncio.to_thread(self._branch, project_id, name)

    def _branch(self, project_id: int | str, name: str) -> dict | None:
        try:
            with self._session() as gl:
                return gl.projects.get(_pid(project_id), lazy=True).branches.get(
                    name, **_READ).asdict()
        except GitLabError as e:
            if e.status == 404:
                return None
            raise

    async def create_commit(self, project_id: int | str, data: dict) -> dict:
        return await asyncio.to_thread(self._create_commit, project_id, data)

    def _create_commit(self, project_id: int | str, data: dict) -> dict:
        try:
            with self._session() as gl:
                return gl.projects.get(_pid(project_id), lazy=True).commits.create(
                    data, **_WRITE).asdict()
        except GitLabError as e:
            if e.status == 403:
                raise GitLabError(REFUSED.format(detail=str(e)), 403) from None
            raise

    def branch_url(self, project: str, branch: str) -> str:
        return f"{self.base_url}/{project}/-/tree/{quote(branch, safe='/')}"
