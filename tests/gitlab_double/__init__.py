"""A GitLab test double: the one sanctioned stand-in for GitLab in Booklab's tests.

It behaves like GitLab where Booklab depends on it: OAuth2 authorization-code
flow (with PKCE and refresh-token rotation), the REST v4 calls Booklab and
oauthenticator make (status codes, error bodies, pagination headers, role
rules), and real git serving over smart HTTP through `git http-backend`.
Unknown routes answer 404 JSON. It listens on 127.0.0.1 unless started with
``host=`` a local address that a test's other network namespaces reach
(``gl.start(host="10.213.7.1")``, see tests/netns.py) — never a public one.

Python API::

    gl = GitLabDouble(tmp_path)
    gl.start()                                   # gl.url == "http://127.0.0.1:PORT"
    gl.add_user("alice", password="alice-pw")
    gl.add_project("demo/hello", files={"Dockerfile": "FROM x"})
    gl.add_member("demo/hello", "alice", 30)     # or a group path: inherited below it
    gl.share_project("demo/hello", "partners", 30)  # partners' members: at most Developer
    gl.store.link_host = "gitlab.internal:8443"  # behind a proxy: Link headers name it
    gl.stop()

Deliberate simplifications: OAuth applications are trusted (no consent page),
no CSRF token on the sign-in form, no admins, git push is always refused, the
old access token dies together with its refresh token when it is refreshed.

CLI (foreground, prints "gitlab-double listening on URL" when ready)::

    python -m tests.gitlab_double --port 8929 --data-dir DIR --seed seed.json

Seed file format (JSON; every section optional; paths relative to the seed file)::

    {
      "users": [{"username": "alice", "password": "alice-pw",
                 "name": "Alice", "email": "alice@example.com"}],
      "groups": [{"path": "demo", "visibility": "private"},
                 {"path": "demo/sub"}],
      "projects": [{"path": "demo/hello", "visibility": "private",
                    "default_branch": "main", "description": "",
                    "files_dir": "repos/hello",
                    "files": {"README.md": "# Hello\\n"},
                    "branches": {"dev": {"notebook.ipynb": "{}"}},
                    "tags": {"v1": "main"}}],
      "members": [{"path": "demo/hello", "user": "alice", "access_level": 30}],
      "oauth_apps": [{"client_id": "booklab", "client_secret": "s3cret",
                      "redirect_uri": "http://127.0.0.1:8000/hub/oauth_callback",
                      "scopes": ["api", "read_user", "read_repository"]}]
    }

Groups are created in order (parents first); a project's missing groups are
created for it, and a namespace that is a username makes a personal project.
`files_dir` (a directory tree) and inline `files` are merged into the initial
commit; `branches` maps a branch name to files committed on top of the default
branch; `tags` maps a tag name to the ref it points at.
"""

from .double import GitLabDouble
from .store import DEVELOPER, GUEST, MAINTAINER, NO_ONE, OWNER, REPORTER, NotFound

__all__ = ["GitLabDouble", "NotFound", "GUEST", "REPORTER", "DEVELOPER", "MAINTAINER", "OWNER",
           "NO_ONE"]
