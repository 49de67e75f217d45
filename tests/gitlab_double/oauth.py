"""Browser sign-in and OAuth2 (authorization code, refresh, revoke, token
info) the way GitLab's Doorkeeper answers them.

Applications are treated as instance-wide *trusted*: a signed-in user is sent
straight back to the client with a code, without a consent page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import secrets
import time
from typing import Any

from tornado.httputil import url_concat

from .store import (
    CODE_LIFETIME,
    DEFAULT_OAUTH_SCOPES,
    KNOWN_SCOPES,
    AuthCode,
    OAuthApp,
    Session,
    Token,
    User,
)
from .web import ApiError, BaseHandler

SESSION_COOKIE = "_gitlab_session"
INVALID_GRANT = ("The provided authorization grant is invalid, expired, revoked, does not "
                 "match the redirection URI used in the authorization request, or was issued "
                 "to another client.")
INVALID_CLIENT = ("Client authentication failed due to unknown client, no client "
                  "authentication included, or unsupported authentication method.")
INVALID_SCOPE = "The requested scope is invalid, unknown, or malformed."

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title} · GitLab</title></head>
<body>{body}</body></html>"""
_SIGN_IN_FORM = """<h1>Sign in</h1>{alert}
<form method="post" action="/users/sign_in" id="new_user">
  <label for="user_login">Username or primary email</label>
  <input type="text" name="username" id="user_login" autocomplete="username" autofocus>
  <label for="user_password">Password</label>
  <input type="password" name="password" id="user_password" autocomplete="current-password">
  <button type="submit" name="commit" value="Sign in" data-testid="sign-in-button">Sign in</button>
</form>"""


class SessionMixin(BaseHandler):
    def session(self) -> Session | None:
        sid = self.get_cookie(SESSION_COOKIE)
        return self.store.sessions.get(sid) if sid else None

    def signed_in_user(self) -> User | None:
        session = self.session()
        if session is None or session.user_id is None:
            return None
        return self.store.users.get(session.user_id)

    def start_session(self, session: Session) -> None:
        sid = secrets.token_hex(16)
        self.store.sessions[sid] = session
        self.set_cookie(SESSION_COOKIE, sid, httponly=True, path="/")

    def page(self, title: str, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(_PAGE.format(title=html.escape(title), body=body))


class SignInHandler(SessionMixin):
    def get(self) -> None:
        self.page("Sign in", _SIGN_IN_FORM.format(alert=""))

    def post(self) -> None:
        user = self.store.user_by_name(self.get_body_argument("username", ""))
        password = self.get_body_argument("password", "")
        if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
            alert = '<div class="flash-alert" role="alert">Invalid login or password.</div>'
            self.page("Sign in", _SIGN_IN_FORM.format(alert=alert))
            return
        old = self.session()
        return_to = old.return_to if old else None
        self.start_session(Session(user_id=user.id))  # a fresh id after login
        self.redirect(return_to or "/")


class SignOutHandler(SessionMixin):
    def get(self) -> None:
        self.post()

    def post(self) -> None:
        sid = self.get_cookie(SESSION_COOKIE)
        if sid:
            self.store.sessions.pop(sid, None)
        self.clear_cookie(SESSION_COOKIE, path="/")
        self.redirect("/users/sign_in")


class RootHandler(SessionMixin):
    def get(self) -> None:
        user = self.signed_in_user()
        who = f"Signed in as @{html.escape(user.username)}" if user else \
            '<a href="/users/sign_in">Sign in</a>'
        self.page("Projects", f"<h1>GitLab test double</h1><p>{who}</p>")


class AuthorizeHandler(SessionMixin):
    def get(self) -> None:
        app = self.store.apps.get(self.get_query_argument("client_id", ""))
        if app is None:
            self._error_page(401, "invalid_client", INVALID_CLIENT)
            return
        redirect_uri = self.get_query_argument("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            self._error_page(400, "invalid_redirect_uri", "The redirect URI included is not valid.")
            return
        state = self.get_query_argument("state", None)
        error = self._request_error(app)
        if error:
            self.redirect(url_concat(redirect_uri, {**error, **_state(state)}))
            return
        user = self.signed_in_user()
        if user is None:
            self.start_session(Session(return_to=self.request.uri))
            self.redirect("/users/sign_in")
            return
        code = self._issue_code(app, user, redirect_uri)
        self.redirect(url_concat(redirect_uri, {"code": code.code, **_state(state)}))

    def _scopes(self) -> list[str]:
        raw = self.get_query_argument("scope", "").split()
        return list(dict.fromkeys(raw)) or list(DEFAULT_OAUTH_SCOPES)

    def _request_error(self, app: OAuthApp) -> dict[str, str] | None:
        if self.get_query_argument("response_type", "") != "code":
            return {"error": "unsupported_response_type", "error_description":
                    "The authorization server does not support this response type."}
        scopes = self._scopes()
        if not set(scopes) <= KNOWN_SCOPES or not set(scopes) <= set(app.scopes):
            return {"error": "invalid_scope", "error_description": INVALID_SCOPE}
        method = self.get_query_argument("code_challenge_method", None)
        if self.get_query_argument("code_challenge", None) and method not in (None, "plain",
                                                                               "S256"):
            return {"error": "invalid_request", "error_description":
                    "The code challenge method must be plain or S256."}
        return None

    def _issue_code(self, app: OAuthApp, user: User, redirect_uri: str) -> AuthCode:
        challenge = self.get_query_argument("code_challenge", None)
        method = self.get_query_argument("code_challenge_method", None) or "plain"
        code = AuthCode(code=secrets.token_hex(32), app_id=app.id, user_id=user.id,
                        redirect_uri=redirect_uri, scopes=self._scopes(), challenge=challenge,
                        challenge_method=method if challenge else None)
        self.store.codes[code.code] = code
        return code

    def _error_page(self, status: int, error: str, description: str) -> None:
        body = (f"<h1>An error has occurred</h1><p id=\"error\">{html.escape(error)}</p>"
                f"<p>{html.escape(description)}</p>")
        self.page("Authorization error", body, status)


def _state(state: str | None) -> dict[str, str]:
    return {"state": state} if state is not None else {}


def _oauth_error(status: int, error: str, description: str) -> ApiError:
    return ApiError(status, {"error": error, "error_description": description})


class OAuthEndpoint(BaseHandler):
    """Common parts of /oauth/token, /oauth/revoke: parameters and client auth."""

    def params(self) -> dict[str, str]:
        if self.request.headers.get("Content-Type", "").startswith("application/json"):
            try:
                data = json.loads(self.request.body or b"{}")
            except ValueError:
                data = {}
            return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        args = {k: v[-1].decode() for k, v in self.request.query_arguments.items()}
        args.update({k: v[-1].decode() for k, v in self.request.body_arguments.items()})
        return args

    def client(self, params: dict[str, str]) -> OAuthApp | None:
        client_id, secret = params.get("client_id"), params.get("client_secret")
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
        app = self.store.apps.get(client_id or "")
        if app is None or not secrets.compare_digest(app.client_secret.encode(),
                                                     (secret or "").encode()):
            return None
        return app


class TokenHandler(OAuthEndpoint):
    def post(self) -> None:
        params = self.params()
        app = self.client(params)
        if app is None:
            raise _oauth_error(401, "invalid_client", INVALID_CLIENT)
        grant = params.get("grant_type")
        if grant == "authorization_code":
            token = self._from_code(app, params)
        elif grant == "refresh_token":
            token = self._from_refresh(app, params)
        else:
            raise _oauth_error(400, "unsupported_grant_type", "The authorization grant type is "
                               "not supported by the authorization server.")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")
        self.write_json(token_response(token))

    def _from_code(self, app: OAuthApp, params: dict[str, str]) -> Token:
        if not params.get("code"):
            raise _oauth_error(400, "invalid_request", "Missing required parameter: code.")
        code = self.store.codes.get(params["code"])
        if (code is None or code.used or code.app_id != app.id
                or time.time() > code.created_at + CODE_LIFETIME
                or params.get("redirect_uri") != code.redirect_uri
                or not _pkce_ok(code, params.get("code_verifier"))):
            raise _oauth_error(400, "invalid_grant", INVALID_GRANT)
        code.used = True
        return self.store.new_token(code.user_id, code.scopes, app_id=app.id)

    def _from_refresh(self, app: OAuthApp, params: dict[str, str]) -> Token:
        old = self.store.refresh_tokens.get(params.get("refresh_token", ""))
        if old is None or old.revoked or old.app_id != app.id:
            raise _oauth_error(400, "invalid_grant", INVALID_GRANT)
        self.store.revoke(old)  # rotation: the old pair is dead from now on
        return self.store.new_token(old.user_id, old.scopes, app_id=app.id)


def _pkce_ok(code: AuthCode, verifier: str | None) -> bool:
    if code.challenge is None:
        return True
    if not verifier:
        return False
    if code.challenge_method == "S256":
        digest = hashlib.sha256(verifier.encode()).digest()
        verifier = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return secrets.compare_digest(verifier.encode(), code.challenge.encode())


def token_response(token: Token) -> dict[str, Any]:
    return {"access_token": token.access_token, "token_type": "Bearer",
            "expires_in": token.expires_in, "refresh_token": token.refresh_token,
            "scope": " ".join(token.scopes), "created_at": int(token.created_at)}


class RevokeHandler(OAuthEndpoint):
    def post(self) -> None:
        params = self.params()
        raw = params.get("token", "")
        token = self.store.tokens.get(raw) or self.store.refresh_tokens.get(raw)
        if token is None:
            self.write_json({})
            return
        app = self.client(params)
        if app is None or app.id != token.app_id:
            raise _oauth_error(403, "unauthorized_client",
                               "You are not authorized to revoke this token")
        self.store.revoke(token)
        self.write_json({})


class TokenInfoHandler(OAuthEndpoint):
    def get(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        raw = auth[7:].strip() if auth.lower().startswith("bearer ") else \
            self.get_query_argument("access_token", "")
        token = self.store.tokens.get(raw)
        problem = ("The access token is invalid" if token is None else
                   "The access token was revoked" if token.revoked else
                   "The access token expired" if token.expired() else None)
        if token is None or problem:
            raise ApiError(401, {"error": "invalid_token", "error_description": problem,
                                 "state": "unauthorized"})
        app = self.store.app_by_id(token.app_id)
        remaining = None if token.expires_in is None else \
            int(token.created_at + token.expires_in - time.time())
        self.write_json({
            "resource_owner_id": token.user_id, "scope": token.scopes, "scopes": token.scopes,
            "expires_in": remaining, "expires_in_seconds": remaining,
            "application": {"uid": app.client_id} if app else None,
            "created_at": int(token.created_at),
        })


HANDLERS = [
    (r"/", RootHandler),
    (r"/users/sign_in", SignInHandler),
    (r"/users/sign_out", SignOutHandler),
    (r"/oauth/authorize", AuthorizeHandler),
    (r"/oauth/token", TokenHandler),
    (r"/oauth/revoke", RevokeHandler),
    (r"/oauth/token/info", TokenInfoHandler),
]
