"""Shared handler machinery: JSON errors, token authentication, scopes and
GitLab's offset pagination headers."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any
from urllib.parse import urlencode

from tornado.web import HTTPError, RequestHandler

from .store import Project, Store, Token, User

READ_METHODS = ("GET", "HEAD")
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20
_STATUS_TEXT = {400: "400 Bad request", 401: "401 Unauthorized", 403: "403 Forbidden",
                404: "404 Not Found", 405: "405 Not Allowed", 502: "502 Bad Gateway",
                503: "503 Service Unavailable"}


class ApiError(HTTPError):
    """An error answered with a JSON body (and optional headers), as GitLab does."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(status)
        self.body = body
        self.headers = headers or {}


def message(status: int, text: str) -> ApiError:
    return ApiError(status, {"message": text})


def not_found(what: str) -> ApiError:
    return message(404, f"404 {what} Not Found")


def bad_param(name: str, problem: str = "does not have a valid value") -> ApiError:
    return ApiError(400, {"error": f"{name} {problem}"})


class BaseHandler(RequestHandler):
    """JSON everywhere, including for 404/405 and unexpected errors."""

    @property
    def store(self) -> Store:
        return self.settings["store"]

    def check_xsrf_cookie(self) -> None:  # API clients send no XSRF token
        return

    async def prepare(self) -> None:
        if self.store.latency:  # a round trip to a GitLab elsewhere (Store.latency)
            await asyncio.sleep(self.store.latency)
        if self.store.outage and self.request.path.startswith("/api/"):
            status = self.store.outage  # GitLab.outage(): what its proxy answers meanwhile
            raise ApiError(status, {"message": _STATUS_TEXT.get(status, f"{status}")})

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, ApiError):
            for name, value in exc.headers.items():
                self.set_header(name, value)
            body = exc.body
        elif status_code in (404, 405):
            body = {"error": _STATUS_TEXT[status_code]}
        else:
            body = {"message": _STATUS_TEXT.get(status_code, f"{status_code} {self._reason}")}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise HTTPError(404)


class ApiHandler(BaseHandler):
    """Base of REST v4 handlers. Subclasses may widen `read_scopes`."""

    read_scopes: tuple[str, ...] = ("api", "read_api")
    write_scopes: tuple[str, ...] = ("api",)

    def _raw_token(self) -> str | None:
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return (self.request.headers.get("Private-Token")
                or self.get_query_argument("access_token", None)
                or self.get_query_argument("private_token", None))

    def authenticate(self) -> User | None:
        """The token's user, or None without a token; invalid tokens raise 401."""
        raw = self._raw_token()
        if raw is None:
            return None
        token = self.store.tokens.get(raw)
        if token is None:
            raise message(401, "401 Unauthorized")
        _check_alive(token)
        self._check_scope(token)
        return self.store.users[token.user_id]

    def require_user(self) -> User:
        viewer = self.authenticate()
        if viewer is None:
            raise message(401, "401 Unauthorized")
        return viewer

    def _check_scope(self, token: Token) -> None:
        allowed = self.read_scopes if self.request.method in READ_METHODS else self.write_scopes
        if set(token.scopes) & set(allowed):
            return
        scope = " ".join(allowed)
        description = ("The request requires higher privileges than provided by the "
                       "access token.")
        header = (f'Bearer realm="Protected by OAuth 2.0", error="insufficient_scope", '
                  f'error_description="{description}", scope="{scope}"')
        raise ApiError(403, {"error": "insufficient_scope", "error_description": description,
                             "scope": scope}, {"WWW-Authenticate": header})

    # -- projects ---------------------------------------------------------
    def visible_project(self, ref: str, viewer: User | None) -> Project:
        """GitLab answers 404 for projects the viewer may not see."""
        project = self.store.project_by_ref(ref)
        if project is None or not self.store.can_see_project(viewer, project):
            raise not_found("Project")
        return project

    def readable_project(self, ref: str, viewer: User | None) -> Project:
        project = self.visible_project(ref, viewer)
        if not self.store.can_read_code(viewer, project):
            raise message(403, "403 Forbidden")
        return project

    # -- parameters -------------------------------------------------------
    def int_arg(self, name: str, default: int | None = None) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise bad_param(name, "is invalid") from None

    def choice_arg(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.get_query_argument(name, None) or default
        if value is not None and value not in choices:
            raise bad_param(name)
        return value

    def bool_arg(self, name: str) -> bool:
        value = self.get_query_argument(name, "false").lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise bad_param(name, "is invalid")
        return value in ("true", "1", "yes")

    def body_params(self) -> dict[str, Any]:
        """Request parameters from a JSON or form body (and the query string)."""
        params: dict[str, Any] = {k: v[-1].decode() for k, v in
                                  self.request.query_arguments.items()}
        if self.request.headers.get("Content-Type", "").startswith("application/json"):
            try:
                data = json.loads(self.request.body or b"{}")
            except ValueError:
                raise ApiError(400, {"error": "The request body is not valid JSON"}) from None
            if isinstance(data, dict):
                params.update(data)
        else:
            params.update({k: v[-1].decode() for k, v in self.request.body_arguments.items()})
        return params

    def paginate(self, items: list[Any]) -> list[Any]:
        """Slice one page and set GitLab's X-* and Link headers."""
        page = self.int_arg("page", 1) or 1
        per_page = self.int_arg("per_page", DEFAULT_PER_PAGE) or DEFAULT_PER_PAGE
        if page < 1:
            raise bad_param("page", "is invalid")
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        total = len(items)
        pages = max(math.ceil(total / per_page), 1)
        nxt = page + 1 if page < pages else None
        prev = page - 1 if page > 1 else None
        for name, value in (("X-Total", total), ("X-Total-Pages", pages), ("X-Page", page),
                            ("X-Per-Page", per_page), ("X-Next-Page", nxt or ""),
                            ("X-Prev-Page", prev or "")):
            self.set_header(name, str(value))
        links = [(prev, "prev"), (nxt, "next"), (1, "first"), (pages, "last")]
        self.set_header("Link", ", ".join(
            f'<{self._page_url(n, per_page)}>; rel="{rel}"' for n, rel in links if n))
        start = (page - 1) * per_page
        return items[start:start + per_page]

    def _page_url(self, page: int, per_page: int) -> str:
        args = [(k, v.decode()) for k, vs in self.request.query_arguments.items()
                for v in vs if k not in ("page", "per_page", "access_token", "private_token")]
        args += [("page", str(page)), ("per_page", str(per_page))]
        host = self.store.link_host or self.request.host
        return f"{self.request.protocol}://{host}{self.request.path}?{urlencode(args)}"


def _check_alive(token: Token) -> None:
    if token.revoked:
        _invalid_token("Token was revoked. You have to re-authorize from the user.")
    if token.expired():
        _invalid_token("Token is expired. You can either do re-authorization or token refresh.")


def _invalid_token(description: str) -> None:
    header = (f'Bearer realm="Protected by OAuth 2.0", error="invalid_token", '
              f'error_description="{description}"')
    raise ApiError(401, {"error": "invalid_token", "error_description": description},
                   {"WWW-Authenticate": header})
