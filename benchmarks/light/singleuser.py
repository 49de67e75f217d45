#!/usr/bin/python3
"""A stand-in for ``jupyterhub-singleuser`` (the load benchmark's light image).

What the hub and a client see of a single-user server, and nothing else:

- it listens on ``--ip``/``--port`` (the runner's arguments) and answers every
  path under ``$JUPYTERHUB_SERVICE_PREFIX`` (the hub's wait-up gets 200 with an
  ``X-JupyterHub-Version`` header, as from the real server);
- ``<prefix>api/status`` needs a token (``Authorization: token ...``) that the
  hub vouches for: the server asks ``$JUPYTERHUB_API_URL/user`` with it, as
  JupyterHub's HubAuth does (and caches the answer for 5 minutes), and accepts
  it when its scopes grant one of ``$JUPYTERHUB_OAUTH_ACCESS_SCOPES``;
- at start it calls the hub API once with ``$JUPYTERHUB_API_TOKEN`` (its own
  token), as the real server checks the hub.

No kernels, no contents, no activity reports, no OAuth login for browsers.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_URL = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
PREFIX = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
USER = os.environ.get("JUPYTERHUB_USER", "")
SERVER = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
ACCESS = set(json.loads(os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES") or "[]"))
STARTED = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
HUB_VERSION = ""
CACHE: dict[str, tuple[float, bool]] = {}
LOCK = threading.Lock()


def arg(name: str, default: str) -> str:
    for a in sys.argv[1:]:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def hub_get(path: str, token: str) -> tuple[int, dict, dict]:
    req = urllib.request.Request(API_URL + path, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), {}
    except (OSError, ValueError) as e:  # unreachable, or not JSON: no answer
        print(f"[light] hub API {path}: {e}", file=sys.stderr, flush=True)
        return 0, {}, {}


def granted(scopes: set[str]) -> bool:
    """Whether a token's scopes grant access to this server (HubAuth's check, for the
    forms the hub hands out: the server, its user's servers, all servers)."""
    wanted = ACCESS or {f"access:servers!server={USER}/{SERVER}"}
    return bool(wanted & scopes) or f"access:servers!user={USER}" in scopes \
        or "access:servers" in scopes


def authorized(token: str) -> bool:
    now = time.monotonic()
    with LOCK:
        hit = CACHE.get(token)
    if hit and now - hit[0] < 300:
        return hit[1]
    status, _, model = hub_get("/user", token)
    ok = status == 200 and granted(set(model.get("scopes") or []))
    with LOCK:
        CACHE[token] = (now, ok)
    return ok


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if HUB_VERSION:
            self.send_header("X-JupyterHub-Version", HUB_VERSION)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if not path.startswith(PREFIX.rstrip("/")):
            self.answer(404, {"message": "not under this server's prefix"})
        elif path == PREFIX + "api/status":
            auth = self.headers.get("Authorization", "")
            token = auth[len("token "):] if auth.startswith("token ") else ""
            if not token or not authorized(token):
                self.answer(403, {"message": "Forbidden"})
            else:
                self.answer(200, {"started": STARTED, "last_activity": STARTED,
                                  "connections": 0, "kernels": 0})
        else:
            self.answer(200, {"stand_in": "booklab-bench light server", "user": USER})

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write("[light] " + fmt % args + "\n")


def main() -> None:
    global HUB_VERSION
    status, headers, info = hub_get("/", os.environ.get("JUPYTERHUB_API_TOKEN", ""))
    HUB_VERSION = headers.get("X-JupyterHub-Version", "") or str(info.get("version", ""))
    print(f"[light] hub API {API_URL}: {status}, version {HUB_VERSION}", flush=True)
    server = ThreadingHTTPServer((arg("ip", "0.0.0.0"), int(arg("port", "8888"))), Handler)
    print(f"[light] serving {PREFIX} on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
