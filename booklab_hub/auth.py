"""BooklabGitLabAuthenticator: GitLab login that keeps the user's token for launches.

The token (in JupyterHub's encrypted auth state) is what the spawner uses to
check every launch against GitLab and to clone the repository.
"""

from __future__ import annotations

from oauthenticator.gitlab import GitLabOAuthenticator
from traitlets import Unicode, default

from booklab_hub.handlers import handlers_for

# what each clone method needs from GitLab (see docs/security.md)
SCOPES_TOKEN_CLONE = ["read_user", "read_api", "read_repository"]


class BooklabGitLabAuthenticator(GitLabOAuthenticator):
    """GitLab OAuth for Booklab: auth state on, scopes matching the clone method."""

    login_service = Unicode("GitLab", config=True, help="Name on the login button.")

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        # the spawner needs the user's GitLab token: auth state is not optional
        return True

    @default("scope")
    def _scope_default(self) -> list[str]:
        return list(SCOPES_TOKEN_CLONE)

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        return True

    def get_handlers(self, app) -> list[tuple]:
        """OAuth login/callback plus Booklab's own pages (picker, build log, admin)."""
        return super().get_handlers(app) + handlers_for(app)
