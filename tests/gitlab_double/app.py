"""The Tornado application and the background thread that serves it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from . import api, api_commits, api_repo, git_http, oauth
from .store import Store
from .web import NotFoundHandler

RequestLog = list[tuple[str, str, int]]
# (method, path, arrived, answered): wall-clock seconds, for telling overlapping calls
Timings = list[tuple[str, str, float, float]]


def make_app(store: Store, requests_log: RequestLog, timings: Timings | None = None
             ) -> Application:
    def log_request(handler: RequestHandler) -> None:
        # The path only: query strings may carry tokens, codes or secrets.
        method, path = handler.request.method or "", handler.request.path
        requests_log.append((method, path, handler.get_status()))
        if timings is not None:
            answered = time.time()
            timings.append((method, path, answered - handler.request.request_time(), answered))

    # api_commits first: its branches handler also answers api_repo's GET
    handlers = [*oauth.HANDLERS, *api.HANDLERS, *api_commits.HANDLERS, *api_repo.HANDLERS,
                *git_http.HANDLERS]
    return Application(handlers, store=store, default_handler_class=NotFoundHandler,
                       log_function=log_request, xsrf_cookies=False)


class ServerThread:
    """Serves an Application on ``host`` (127.0.0.1 unless given) from a thread with its
    own event loop."""

    def __init__(self, app_factory: Callable[[], Application], port: int = 0,
                 host: str = "127.0.0.1"):
        self._sockets: list[socket.socket] = bind_sockets(port, host,
                                                          family=socket.AF_INET)
        self.port: int = self._sockets[0].getsockname()[1]
        self._factory = app_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: HTTPServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gitlab-double-{self.port}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = HTTPServer(self._factory())
        self._server.add_sockets(self._sockets)
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def hold(self) -> Callable[[], None]:
        """Answer nothing (a GitLab slow to answer) until the returned function is
        called: the server's loop waits on a gate; connections queue meanwhile."""
        assert self._loop is not None
        gate = threading.Event()
        self._loop.call_soon_threadsafe(gate.wait, 300)
        return gate.set

    def stop(self) -> None:
        if self._loop is None or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.stop()
        await self._server.close_all_connections()
