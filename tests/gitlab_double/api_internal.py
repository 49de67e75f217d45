"""GitLab's internal API for its SSH shell, as far as the double's sshd needs it.

``GET /api/v4/internal/authorized_keys?key=<base64>`` finds the deploy key
(GitLab answers ``{"id", "key", ...}`` or 404), and ``POST
/api/v4/internal/allowed`` decides whether a key may run ``git-upload-pack``
(read) or ``git-receive-pack`` (push) on a project. Both require the
``Gitlab-Shared-Secret`` header that ``GitLabDouble.start_ssh()`` generates;
without SSH started they answer 404.
"""

from __future__ import annotations

import base64
import hmac
import json
from datetime import timezone

from .store import utcnow
from .web import BaseHandler, message

_DENIED = ("The project you were looking for could not be found or "
           "you don't have permission to view it.")


class InternalHandler(BaseHandler):
    async def prepare(self) -> None:
        await super().prepare()  # the latency: sshd asks these over the network too
        secret = getattr(self.store, "internal_secret", "")
        given = self.request.headers.get("Gitlab-Shared-Secret", "")
        if not secret:
            raise message(404, "404 Not Found")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise message(401, "401 Unauthorized")


class AuthorizedKeysHandler(InternalHandler):
    def get(self) -> None:
        offered = self.get_query_argument("key", "")
        for key in list(self.store.deploy_keys.values()):
            parts = key.key.split()
            if len(parts) > 1 and _same_blob(parts[1], offered):
                self.write_json({"id": key.id, "title": key.title, "key": key.key})
                return
        raise message(404, "404 Not Found")


class AllowedHandler(InternalHandler):
    def post(self) -> None:
        body = json.loads(self.request.body or b"{}")
        path = str(body.get("project", "")).strip("/").removesuffix(".git")
        project = self.store.project_by_path(path)
        key_id = body.get("key_id")
        link = self.store.key_links.get((project.id, key_id)) if project else None
        if link is None:
            self.write_json({"status": False, "message": _DENIED}, status=404)
            return
        key = self.store.deploy_keys.get(key_id)
        expires = key.expires_at if key is not None else None
        if expires is not None and expires.replace(tzinfo=expires.tzinfo or timezone.utc) \
                <= utcnow():
            # GitLab's access check refuses an expired key (401, as gitlab-shell reads it)
            self.write_json({"status": False, "message": "Your SSH key has expired."},
                            status=401)
            return
        if body.get("action") != "git-upload-pack":
            text = ("This deploy key does not have write access to this project."
                    if not link else "The GitLab double does not accept pushes.")
            self.write_json({"status": False, "message": text}, status=403)
            return
        self.write_json({"status": True, "gl_repository": f"project-{project.id}",
                         "gl_project_path": project.full_path,
                         "repository_path": str(project.repo_dir)})


def _same_blob(stored: str, offered: str) -> bool:
    try:
        return base64.b64decode(stored) == base64.b64decode(offered)
    except ValueError:
        return False


HANDLERS = [
    (r"/api/v4/internal/authorized_keys", AuthorizedKeysHandler),
    (r"/api/v4/internal/allowed", AllowedHandler),
]
