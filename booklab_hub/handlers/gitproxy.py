"""The hub's read-only git proxy: how a runner fetches without any GitLab token.

A user's OAuth token can write to GitLab (the ``api`` scope), so it never goes
to a runner. For a launch without a read-only deploy key the spawner gives the
runner a one-time secret bound to the job instead (``git_grant:<job>`` in
Redis holds its SHA-256, with a TTL). With it, and only while the job is
``claimed`` or ``fetching``, the runner may fetch that one job's project here:

    GET  <hub>/booklab/git/<job>/info/refs?service=git-upload-pack
    POST <hub>/booklab/git/<job>/git-upload-pack

(HTTP Basic, user = the job id, password = the secret). The hub checks the job
record's signature, then forwards the request to the project's
``http_url_to_repo`` on the configured GitLab with the user's own token, which
never leaves the hub. ``git-receive-pack`` (push), any other path, another
job's secret and any request once the fetch is over are refused; the grant is
deleted when the job leaves ``fetching``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from urllib.parse import urlsplit

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from booklab_spawner.crypto import Signer
from booklab_spawner.exceptions import JobNotFound, SignatureError
from booklab_spawner.jobs import CLAIMED, FETCHING

from .base import BooklabHandler, PageSettings

UPLOAD_PACK = "git-upload-pack"
FORWARD_HEADERS = ("Content-Type", "Accept", "Git-Protocol", "Content-Encoding", "User-Agent")
RETURN_HEADERS = ("Content-Type", "Cache-Control", "Expires", "Pragma")
PROXY_TIMEOUT = 600  # seconds one forwarded request may take (the answer is streamed)


def runner_token_of(app) -> str:
    return (app.config.get("BooklabSpawner", {}).get("runner_token")
            or os.environ.get("BOOKLAB_RUNNER_TOKEN", ""))


class GitProxyHandler(BooklabHandler):
    """Forwards git-upload-pack for one job's project, with the user's token."""

    _accept_cookie_auth = False  # the grant is the only credential

    def initialize(self, booklab: PageSettings, runner_token: str) -> None:
        super().initialize(booklab)
        self.runner_token = runner_token

    def check_xsrf_cookie(self) -> None:
        return None  # no cookie is accepted here, so there is nothing to forge

    async def get(self, job_id: str, action: str) -> None:
        if action != "info/refs" or self.get_query_argument("service", "") != UPLOAD_PACK:
            raise web.HTTPError(403, "This proxy serves only git-upload-pack (fetch)")
        await self._forward(job_id, f"info/refs?service={UPLOAD_PACK}")

    async def post(self, job_id: str, action: str) -> None:
        if action != UPLOAD_PACK:
            raise web.HTTPError(403, "This proxy serves only git-upload-pack (fetch)")
        await self._forward(job_id, UPLOAD_PACK)

    async def _authorize(self, job_id: str) -> dict[str, str]:
        """The job record, if the request carries the job's live grant."""
        auth = self.request.headers.get("Authorization", "")
        try:
            name, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":") \
                if auth[:6].lower() == "basic " else ("", "", "")
        except (binascii.Error, UnicodeDecodeError):
            name, secret = "", ""
        stored = await self.store.fetch_grant(job_id) if secret else None
        given = hashlib.sha256(secret.encode()).hexdigest()
        if name != job_id or not stored or not hmac.compare_digest(stored, given):
            self.log.warning("git proxy: refused a request for job %s (no valid grant)", job_id)
            raise web.HTTPError(403, "No valid fetch grant for this job")
        try:
            job = await self.store.get(job_id)
            Signer(self.runner_token).check_job(job)
        except (JobNotFound, SignatureError) as e:
            self.log.warning("git proxy: job %s refused: %s", job_id, e)
            raise web.HTTPError(403, "This job cannot be fetched") from None
        if job.get("state") not in (CLAIMED, FETCHING):
            raise web.HTTPError(403, "The fetch of this job is over")
        return job

    def _upstream(self, job: dict[str, str]) -> str:
        url, base = urlsplit(job.get("clone_url", "")), urlsplit(self.booklab.gitlab_url)
        if (url.scheme, url.netloc) != (base.scheme, base.netloc) or url.username \
                or url.query or not url.path.endswith(".git"):
            raise web.HTTPError(403, "The job's repository is not on the configured GitLab")
        return job["clone_url"]

    async def _token(self, job: dict[str, str]) -> str:
        user = self.find_user(job.get("user", ""))
        state = (await user.get_auth_state() or {}) if user else {}
        if not state.get("access_token"):
            raise web.HTTPError(403, "The hub has no GitLab token for this job's user")
        return state["access_token"]

    async def _forward(self, job_id: str, suffix: str) -> None:
        job = await self._authorize(job_id)
        upstream = f"{self._upstream(job)}/{suffix}"
        basic = base64.b64encode(f"oauth2:{await self._token(job)}".encode()).decode()
        headers = {h: self.request.headers[h] for h in FORWARD_HEADERS
                   if h in self.request.headers}
        headers["Authorization"] = f"Basic {basic}"
        post = self.request.method == "POST"
        relay = _Relay(self)
        resp = await AsyncHTTPClient().fetch(HTTPRequest(
            upstream, method=self.request.method, headers=headers,
            body=self.request.body if post else None, follow_redirects=False,
            request_timeout=PROXY_TIMEOUT, decompress_response=False,
            header_callback=relay.header, streaming_callback=relay.chunk), raise_error=False)
        if resp.code != 200:  # GitLab refused: nothing was relayed
            code = resp.code
            self.log.warning("git proxy: GitLab answered %s for job %s", code, job_id)
            if code in (401, 403, 404) or 300 <= code < 400:
                raise web.HTTPError(403, "GitLab refused the fetch with the user's token")
            raise web.HTTPError(502, f"GitLab answered {code}")
        self.log.info("git proxy: %s %s for job %s (%d bytes)", self.request.method,
                      suffix.split("?")[0], job_id, relay.size)
        self.finish()


class _Relay:
    """Streams a 200 answer from GitLab to the runner as it arrives (packs can be big)."""

    def __init__(self, handler: GitProxyHandler):
        self.handler, self.code, self.headers = handler, 0, {}
        self.started, self.size = False, 0

    def header(self, line: str) -> None:
        if line.startswith("HTTP/"):
            self.code, self.headers = int(line.split()[1]), {}
        elif ":" in line:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def chunk(self, data: bytes) -> None:
        if self.code != 200:
            return  # an error body: not relayed
        if not self.started:
            self.started = True
            for name in (*RETURN_HEADERS, "Content-Encoding"):
                if name.lower() in self.headers:
                    self.handler.set_header(name, self.headers[name.lower()])
        self.size += len(data)
        self.handler.write(data)
        self.handler.flush()
