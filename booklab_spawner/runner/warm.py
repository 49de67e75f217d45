"""Warm notebook servers: for images launched recently, a runner keeps a few
containers already started, their notebook server's imports done, each waiting
to be bound to one launch.

A warm container is made exactly like a cold one (same image, ``HARDENING``,
limits, network, user, published port; see :mod:`.containers`) except that it
has no job: its labels name only the runner (``org.booklab.warm``), its name is
``booklab-warm-<random>``, its environment is the image's own, and its command
is :data:`ENTRY`: the Python that runs the image's ``jupyterhub-singleuser``
imports JupyterHub's single-user server, Jupyter Server and JupyterLab, prints
``booklab-warm: ready`` and blocks reading one line from its stdin.

**Binding** one to a job (:meth:`WarmPool.bind`): the runner renames the
container ``booklab-<job id>`` (what reconcile and stop go by: labels cannot
change), copies the commit's content in with ``put_archive`` as for a cold start,
and writes one JSON line -- the job's environment, API token included, and the
server's arguments -- to the container's stdin through Docker's attach socket.
Stdin shows in no ``docker inspect`` field, log or label. The entry point then
points its stdin at /dev/null, puts the environment in place and calls
``jupyterhub.singleuser.main`` in the same process. Readiness is then watched as
for a cold start.

**Isolation.** A warm container is used once (``take`` removes it from the
pool) and removed with its job; before binding it holds no token, no user's
name and no repository content beyond its image. Nothing it prints is trusted:
its ready line only tells the admin page it is warm.

**Prestart.** A job that has just been claimed may *reserve* one
(:meth:`WarmPool.prestart`): the pool creates it from the image the project's
last launch on this runner used, while the job fetches; the job binds it if its
commit needs that image, else gives it back to the pool (:meth:`release`), where
it is an ordinary warm container, kept or removed by the sizing rules. A reserved
container is the job's own slot: no other launch takes it, and the sizing rules
leave it alone.

**Sizing.** See :meth:`WarmPool._fit` and docs/runner.md.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from docker.errors import APIError, ImageNotFound, NotFound

from ..exceptions import LaunchFailed
from .containers import (
    HARDENING,
    LABEL_RUNNER,
    LABEL_WARM,
    Launcher,
    launch_line,
    limits,
    send_line,
)

log = logging.getLogger(__name__)
REFIT = 5.0  # seconds between fits of the pool when nothing woke it

READY_LINE = b"booklab-warm: ready"
WARM_CMD = ["jupyterhub-singleuser"]  # only launches with the default command go warm

# the notebook server's expensive imports, then one line from stdin, then its main
ENTRY_CODE = r"""
import importlib, json, os, sys
try:  # the one import a warm server cannot do without: else it is not JupyterHub's
    from jupyterhub.singleuser import main
except Exception as e:
    sys.exit(f"booklab-warm: no jupyterhub.singleuser here ({e}): this image starts cold")
def _load(names):
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass
_load(("jupyterhub.singleuser", "jupyterhub.singleuser.extension", "jupyterhub.httpclient",
       "jupyter_server.serverapp", "jupyterlab", "jupyterlab.labapp", "jupyter_core.migrate",
       "jupyter_server_terminals", "jupyter_lsp", "jupyter_lsp.virtual_documents_shadow",
       "notebook_shim", "notebook_shim.nbserver", "jinja2.ext", "httpx", "httpcore", "h11",
       "IPython", "tornado.platform.asyncio"))
try:  # the handlers of Jupyter Server's services, as the server app lists them
    from jupyter_server.serverapp import JUPYTER_SERVICE_HANDLERS as _services
    _load(m for mods in _services.values() for m in (mods or []))
except Exception:
    pass
sys.stdout.write("booklab-warm: ready\n")
sys.stdout.flush()
_line = sys.stdin.buffer.readline()
if not _line:
    sys.exit(0)
_bind = json.loads(_line)
del _line
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
os.environ.update(_bind["env"])
if {"JUPYTERHUB_SINGLEUSER_EXTENSION", "JUPYTERHUB_SINGLEUSER_APP"} & set(_bind["env"]):
    importlib.reload(sys.modules["jupyterhub.singleuser"])
sys.argv = _bind["argv"]
del _bind
from jupyterhub.singleuser import main
sys.exit(main())
"""
# the interpreter is the one of the image's jupyterhub-singleuser script (its #! line)
ENTRY = ["/bin/sh", "-c",
         'exec $(sed -n "1s/^#!//p" "$(command -v jupyterhub-singleuser)") -c "$1"',
         "booklab-warm", ENTRY_CODE]


@dataclass(frozen=True)
class Recipe:
    """What a warm container is made of; a launch binds only one of its own recipe."""

    image: str
    network: str
    notebook_port: int
    user_id: int
    limits: tuple[tuple[str, Any], ...]


@dataclass
class Warm:
    container_id: str
    recipe: Recipe
    network: str  # the Docker network mode it was created with
    port: int  # the port its server will listen on (--port)
    bind_ip: str
    url: str
    created: float = field(default_factory=time.time)
    ready: bool = False
    reserved: str = ""  # the job it was prestarted for, until that job takes or releases it
    watch: asyncio.Task | None = None


class WarmPool:
    """The runner's warm containers. ``slots``: the runner's; ``busy()``: jobs it works
    on; ``holding()``: of those, the ones with a container; ``changed()``: publish
    the runner's info (the admin page shows the pool)."""

    def __init__(self, launcher: Launcher, runner_id: str, slots: int,
                 busy: Callable[[], int], holding: Callable[[], int],
                 changed: Callable[[], Awaitable[None]]):
        self.launcher, self.runner_id, self.slots = launcher, runner_id, slots
        self.busy, self.holding, self._publish = busy, holding, changed
        self.size, self.ttl = 1, 600  # the hub's runners.warm_servers / warm_ttl (conf)
        self.recent: dict[Recipe, float] = {}  # recipe -> last launch
        self.warm: dict[str, Warm] = {}
        self.unwarmable: set[str] = set()  # images whose warm container cannot work
        self._wake = asyncio.Event()
        self._creating = 0  # unreserved containers being created
        self._prestarts: dict[str, asyncio.Task] = {}  # job id -> its reserved creation

    # -- what the runner and its workers call ---------------------------------------
    def configure(self, size: int, ttl: int) -> None:
        self.size, self.ttl = max(size, 0), max(ttl, 0)

    def recipe(self, job: dict[str, str], image: str, cmd: list[str], network: str,
               notebook_port: int, user_id: int) -> Recipe | None:
        """The recipe of a launch, or None when it cannot go warm (another command)."""
        if cmd != WARM_CMD or image in self.unwarmable or job.get("gpus"):
            return None  # (a warm container has no GPU request)
        return Recipe(image, network, notebook_port, user_id,
                      tuple(sorted(limits(job, self.launcher.policy).items())))

    def launched(self, recipe: Recipe) -> None:
        self.recent[recipe] = time.time()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def prestart(self, job_id: str, recipe: Recipe) -> None:
        """Reserve a warm container of ``recipe`` for ``job_id``: a free one if there is
        one, else one created now (in the background: the job goes on fetching)."""
        if job_id in self._prestarts or self._reserved_by(job_id):
            return
        free = [w for w in self._free() if w.recipe == recipe]
        if free:
            max(free, key=lambda w: (w.ready, -w.created)).reserved = job_id
            return
        self._prestarts[job_id] = asyncio.create_task(self._create(recipe, reserved=job_id))

    async def take(self, recipe: Recipe, job_id: str = "") -> Warm | None:
        """A warm container of ``recipe``, now out of the pool (used once), if any: the
        one reserved for ``job_id`` first (its creation awaited), else a free one. A
        reservation of another recipe stays the job's until :meth:`release`."""
        creating = self._prestarts.pop(job_id, None) if job_id else None
        if creating is not None:
            await asyncio.gather(creating, return_exceptions=True)
        mine = self._reserved_by(job_id) if job_id else []
        found = [w for w in mine if w.recipe == recipe] or [
            w for w in self._free() if w.recipe == recipe]
        if not found:
            self.wake()
            return None
        warm = max(found, key=lambda w: (w.reserved == job_id, w.ready, -w.created))
        del self.warm[warm.container_id]
        if warm.watch is not None:  # its exits are the job's worker's now: the pool's
            warm.watch.cancel()     # wait on them must be over before the worker's starts
            await asyncio.gather(warm.watch, return_exceptions=True)
        self.wake()
        return warm

    def release(self, job_id: str) -> None:
        """``job_id`` is over (or starts without it): its reservation goes to the pool."""
        creating = self._prestarts.pop(job_id, None)
        if creating is not None:
            creating.add_done_callback(lambda _: self.release(job_id))
        for w in self._reserved_by(job_id):
            w.reserved = ""
            self.wake()

    def _reserved_by(self, job_id: str) -> list[Warm]:
        return [w for w in self.warm.values() if w.reserved == job_id]

    def _free(self) -> list[Warm]:
        return [w for w in self.warm.values() if not w.reserved]

    async def make_room(self) -> None:
        """A cold start needs a slot: remove warm containers until one is free."""
        while self._free() and len(self.warm) + self.holding() + 1 > self.slots:
            await self._discard(self._oldest(), "a launch of another image needs its slot")

    def counts(self) -> dict[str, int]:
        """``image -> warm containers`` (ready or warming), for the runner's info."""
        out: dict[str, int] = {}
        for w in self.warm.values():
            out[w.recipe.image] = out.get(w.recipe.image, 0) + 1
        return out

    async def bind(self, warm: Warm, job: dict[str, str], env: dict[str, str],
                   args: list[str], content: str | None) -> tuple[str, str]:
        """Hand ``warm`` to ``job``: name, content, then environment and arguments
        through stdin. Returns (container id, URL) as :meth:`Launcher.start` does."""
        launcher = self.launcher
        line = launch_line(env, [*WARM_CMD, *args], warm.bind_ip, warm.port)
        try:
            container = await launcher.call(launcher.client.containers.get, warm.container_id)
            await launcher.call(container.rename, f"booklab-{job['id']}")
            if content:
                await launcher.put_content(container, content)
            await launcher.call(send_line, launcher.client, warm.container_id, line)
        except (APIError, NotFound) as e:
            raise LaunchFailed("Docker refused to hand the warm notebook container over: "
                               f"{getattr(e, 'explanation', None) or e}") from None
        return warm.container_id, warm.url

    async def changed(self) -> None:
        """Publish the runner's info (best effort: a launch never fails on it)."""
        try:
            await self._publish()
        except Exception as e:  # Redis hiccup: the next heartbeat publishes it
            log.warning("publishing the warm pool failed: %s", e)

    # -- keeping the pool --------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        """Fit the pool whenever something changed or a warm container expires."""
        while not stopping.is_set():
            self._wake.clear()
            try:
                await self._fit()
            except Exception as e:  # Docker hiccup: the next change tries again
                log.warning("warm pool: %s", e)
            # also every REFIT s: a slot freed by a path that did not wake the pool
            # (or a change missed) costs a few seconds, never the pool
            timeout = min(self._next_expiry() or REFIT, REFIT)
            waiter = asyncio.ensure_future(self._wake.wait())
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waiter, stop}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stop.cancel()

    async def close(self) -> None:
        """Remove every unbound warm container (runner shutdown)."""
        await asyncio.gather(*self._prestarts.values(), return_exceptions=True)
        for warm in list(self.warm.values()):
            await self._discard(warm, "the runner is stopping")

    def _next_expiry(self) -> float | None:
        if not self.recent:
            return None
        return max(min(self.recent.values()) + self.ttl - time.time(), 0) + 0.01

    async def _fit(self) -> None:
        """Within ``warm_servers`` and the free slots, one warm container per recipe
        launched in the last ``warm_ttl`` seconds, most recently launched first;
        the rest removed (expired recipes first)."""
        now = time.time()
        for recipe, at in list(self.recent.items()):
            if now - at >= self.ttl or recipe.image in self.unwarmable:
                del self.recent[recipe]
        for warm in self._free():
            if warm.recipe not in self.recent:
                await self._discard(warm, "unused for its time to live (warm_ttl)")
        # a reserved container is its job's slot (that job is busy, not yet holding)
        reserved = len(self.warm) - len(self._free())
        keep = min(self.size, self.slots - self.holding() - reserved)
        while len(self._free()) > max(keep, 0):
            await self._discard(self._oldest(), "its slot is needed")
        room = min(self.size, self.slots - self.busy()) - len(self._free()) - self._creating
        log.debug("warm pool: %d warm (%d reserved), %d creating, %d busy of %d slots, "
                  "%d recent: room %d", len(self.warm), reserved, self._creating,
                  self.busy(), self.slots, len(self.recent), room)
        have = {w.recipe for w in self._free()}
        wanted = sorted((r for r in self.recent if r not in have),
                        key=lambda r: self.recent[r], reverse=True)
        for recipe in wanted[:max(room, 0)]:
            await self._create(recipe)

    def _oldest(self) -> Warm:
        return min(self._free(), key=lambda w: self.recent.get(w.recipe, 0))

    async def _create(self, recipe: Recipe, reserved: str = "") -> None:
        launcher = self.launcher
        self._creating += 0 if reserved else 1
        try:
            if await self._runs_a_start_script(recipe.image):
                return
            network, port, bind_ip, ports = await launcher.placement(recipe.network,
                                                                     recipe.notebook_port)
            container = await launcher.call(
                launcher.client.containers.create, image=recipe.image, command=ENTRY,
                name=f"booklab-warm-{secrets.token_hex(6)}", detach=True,
                labels={LABEL_RUNNER: self.runner_id, LABEL_WARM: "1"},
                user=str(recipe.user_id), network_mode=network, ports=ports,
                stdin_open=True, environment={}, **dict(recipe.limits), **HARDENING)
            try:
                await launcher.call(container.start)
                url = await launcher.url_of(container, network, port)
            except Exception:
                await launcher.remove(container.id, grace=0)
                raise
        except ImageNotFound:  # evicted meanwhile
            self.recent.pop(recipe, None)
            return
        except Exception as e:
            if not reserved:
                raise
            log.warning("prestart for job %s failed: %s", reserved, e)  # it starts cold
            return
        finally:
            self._creating -= 0 if reserved else 1
        warm = Warm(container.id, recipe, network, port, bind_ip, url, reserved=reserved)
        self.warm[container.id] = warm
        warm.watch = asyncio.create_task(self._watch(warm))
        log.info("warm container %s for %s%s", container.id[:12], recipe.image,
                 f", prestarted for job {reserved}" if reserved else "")
        await self.changed()

    async def _runs_a_start_script(self, image: str) -> bool:
        """repo2docker's ``start`` script (``R2D_ENTRYPOINT``) would run before binding,
        without the launch's environment: such images start cold."""
        img = await self.launcher.call(self.launcher.client.images.get, image)
        env = (img.attrs.get("Config") or {}).get("Env") or []
        if any(item.startswith("R2D_ENTRYPOINT=") for item in env):
            self.unwarmable.add(image)
            return True
        return False

    async def _watch(self, warm: Warm) -> None:
        """Ready when it says so; dropped when it dies before anyone took it."""
        launcher = self.launcher
        ready = asyncio.ensure_future(asyncio.to_thread(_wait_line, launcher.client,
                                                        warm.container_id, READY_LINE))
        died = asyncio.ensure_future(launcher.exits.wait(warm.container_id))
        try:
            await asyncio.wait({ready, died}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and not died.done() and ready.result():
                warm.ready = True
                await self.changed()
                await died
            if self.warm.get(warm.container_id) is warm:  # died unbound: never warm again
                self.unwarmable.add(warm.recipe.image)
                await self._discard(warm, "it exited before it was used")
        finally:
            died.cancel()
            await asyncio.gather(died, return_exceptions=True)

    async def _discard(self, warm: Warm, why: str) -> None:
        self.warm.pop(warm.container_id, None)
        if warm.watch is not None and warm.watch is not asyncio.current_task():
            warm.watch.cancel()
        log.info("removing warm container %s (%s): %s", warm.container_id[:12],
                 warm.recipe.image, why)
        await self.launcher.remove(warm.container_id, grace=0)
        await self.changed()


def _wait_line(client: Any, container_id: str, line: bytes) -> bool:
    """Until the container prints ``line`` (True) or its output ends (False)."""
    try:
        stream = client.api.logs(container_id, stdout=True, stderr=False, stream=True,
                                 follow=True)
        buffer = b""
        for chunk in stream:
            buffer = (buffer + chunk)[-4096:]
            if line in buffer:
                stream.close()
                return True
    except (APIError, NotFound):
        pass
    return False
