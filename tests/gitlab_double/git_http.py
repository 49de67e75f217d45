"""Git smart HTTP, served by the real `git http-backend` (CGI).

Authentication follows GitLab: HTTP Basic with user `oauth2` (or the token
owner's username) and an OAuth token that has `read_repository`,
`write_repository` or `api`; the username with the account password works too.
Anonymous requests to a non-public project get 401 with a Basic challenge,
signed-in users without access get 404, Guests of a private project 403, and
every push is refused with 403: this double is read-only over git.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import logging
import os
import secrets

from .store import Project, User
from .web import BaseHandler

log = logging.getLogger(__name__)

GIT_SCOPES = {"api", "read_repository", "write_repository"}
CHUNK = 64 * 1024
DENIED = ("HTTP Basic: Access denied. If a password was provided for Git authentication, the "
          "password was incorrect or you're required to use a token instead of a password. If "
          "a token was provided, it was either incorrect, expired, or improperly scoped.\n")
NOT_FOUND = ("The project you were looking for could not be found or you don't have "
             "permission to view it.\n")


class GitDenied(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


class GitHttpHandler(BaseHandler):
    async def get(self, path: str, action: str) -> None:
        await self._serve(path, action)

    async def post(self, path: str, action: str) -> None:
        await self._serve(path, action)

    async def _serve(self, path: str, action: str) -> None:
        service = self.get_query_argument("service", None) if action == "info/refs" else action
        try:
            project = self._authorize(path, service)
        except GitDenied as denied:
            self._deny(denied)
            return
        await self._run_backend(project, action)

    def _authorize(self, path: str, service: str | None) -> Project:
        user = self._basic_user()
        project = self.store.project_by_path(path)
        if project is None or not self.store.can_see_project(user, project):
            if user is None:
                raise GitDenied(401, DENIED)
            raise GitDenied(404, NOT_FOUND)
        if service == "git-receive-pack":
            raise GitDenied(403, "You are not allowed to push code to this project.\n")
        if service != "git-upload-pack":
            raise GitDenied(403, "Only the smart HTTP protocol is supported.\n")
        if not self.store.can_read_code(user, project):
            raise GitDenied(403, "You are not allowed to download code from this project.\n")
        return project

    def _basic_user(self) -> User | None:
        """The user of the Basic credentials; None without any; bad ones raise 401."""
        auth = self.request.headers.get("Authorization", "")
        if not auth.lower().startswith("basic "):
            return None
        try:
            name, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise GitDenied(401, DENIED) from None
        user = self._token_user(name, secret) or self._password_user(name, secret)
        if user is None:
            raise GitDenied(401, DENIED)
        return user

    def _token_user(self, name: str, secret: str) -> User | None:
        token = self.store.tokens.get(secret)
        if token is None or token.revoked or token.expired() or not GIT_SCOPES & set(token.scopes):
            return None
        user = self.store.users[token.user_id]
        if name != "oauth2" and name.lower() != user.username.lower():
            return None
        return user

    def _password_user(self, name: str, secret: str) -> User | None:
        user = self.store.user_by_name(name)
        if user and secrets.compare_digest(user.password.encode(), secret.encode()):
            return user
        return None

    def _deny(self, denied: GitDenied) -> None:
        self.set_status(denied.status)
        if denied.status == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="GitLab"')
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(denied.text)

    def _cgi_env(self, project: Project, action: str, body: bytes) -> dict[str, str]:
        req = self.request
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.store.data_dir),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "PATH_INFO": f"/{project.full_path}.git/{action}",
            "QUERY_STRING": req.query,
            "REQUEST_METHOD": req.method or "GET",
            "CONTENT_TYPE": req.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": req.remote_ip or "127.0.0.1",
            "REMOTE_USER": "",
        }
        if "Git-Protocol" in req.headers:
            env["HTTP_GIT_PROTOCOL"] = req.headers["Git-Protocol"]
        return env

    async def _run_backend(self, project: Project, action: str) -> None:
        body = self.request.body or b""
        if self.request.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=self._cgi_env(project, action, body),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stdin and proc.stdout and proc.stderr
        feeder = asyncio.ensure_future(_feed(proc.stdin, body))
        errors = asyncio.ensure_future(proc.stderr.read())
        try:
            self._set_cgi_headers(await proc.stdout.readuntil(b"\r\n\r\n"))
            while chunk := await proc.stdout.read(CHUNK):
                self.write(chunk)
                await self.flush()
        finally:
            await feeder
            await proc.wait()
            stderr = await errors
            if proc.returncode:
                log.warning("git http-backend exited %s: %s", proc.returncode,
                            stderr.decode(errors="replace").strip())
        self.finish()

    def _set_cgi_headers(self, head: bytes) -> None:
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if not name:
                continue
            if name.lower() == "status":
                code, _, reason = value.strip().partition(" ")
                self.set_status(int(code), reason or None)
            else:
                self.set_header(name.strip(), value.strip())


async def _feed(stdin: asyncio.StreamWriter, body: bytes) -> None:
    try:
        stdin.write(body)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()


HANDLERS = [
    (r"/(.+)\.git/(info/refs|git-upload-pack|git-receive-pack)", GitHttpHandler),
]
