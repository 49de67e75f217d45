"""Autosave at stop (operator opt-in ``save.autosave``; a person opts out with the
server option ``autosave: false``): before a running server's container goes, its
changes are committed to ``booklab/<user>/<server>-autosave`` with the same code as
"Save to GitLab" (booklab_hub.save) — the same token rules, path checks and limits.

Wired as ``BooklabSpawner.autosave_hook``: the spawner awaits it within
``autosave_timeout`` and writes what it returns (or why it failed) to the job's log.
"""

from __future__ import annotations

from jupyterhub import orm

from booklab_spawner.exceptions import GitLabError

from .save import BooklabSaver, Launched, SaveError, SaveRun, ServerFiles
from .save_gitlab import SaveGitLab

OFF = (False, "false", "0", "no", "off")


def autosave_branch(user: str, server: str) -> str:
    # not booklab/<user>/<server>/autosave: git cannot hold that ref beside the
    # default save branch booklab/<user>/<server>
    return f"booklab/{user}/{server or 'default'}-autosave"


async def autosave(spawner) -> str:
    """Commit the server's changes; returns the line for the job's log."""
    if (spawner.user_options or {}).get("autosave") in OFF:
        return "Autosave: off for this server"
    if spawner.server is None:
        return ""
    job = await spawner.store.get(spawner.job_id)
    if job.get("user") != spawner.user.name or job.get("server_name") != spawner.name:
        raise SaveError("the job record is not this server's")
    launched = Launched(job["project"], job["project_id"], job["sha"])
    token, _ = await spawner._gitlab_token()
    saver = BooklabSaver(config=spawner.config)
    user = spawner.user
    server_token = user.new_api_token(
        scopes=[f"access:servers!server={user.name}/{spawner.name}"],
        expires_in=saver.token_lifetime, note="booklab autosave (deleted after)")
    try:
        run = SaveRun(SaveGitLab(spawner.gitlab_url, token),
                      ServerFiles(spawner.server.url, server_token, saver.limits()), launched)
        result = await run.save(autosave_branch(user.name, spawner.name),
                                f"Autosave of Booklab server {spawner.name} at stop")
    except GitLabError as e:  # GitLab's status kept: a 5xx (or none) may pass, a 4xx not
        raise SaveError(str(e), e.status if e.status >= 400 else 502) from None
    finally:
        found = orm.APIToken.find(user.db, server_token)
        if found is not None:
            user.db.delete(found)
            user.db.commit()
    if not result.commit:
        return f"Autosave: {result.message}"
    return f"Autosave: {result.message} ({result.commit_url})"
