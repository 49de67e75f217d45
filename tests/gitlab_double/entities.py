"""JSON shapes of GitLab's REST API v4 entities, built from the store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .gitrepo import Commit, Ref
from .store import OWNER, DeployKey, Group, Project, Share, Store, User

NOTIFICATION_GLOBAL = 3


def ts(value: datetime | None) -> str | None:
    """GitLab's timestamp format: UTC with milliseconds."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def git_date(value: str) -> str:
    """git's strict ISO date with GitLab's milliseconds: 2024-01-02T03:04:05.000+00:00."""
    return value if "." in value[:20] else value[:19] + ".000" + value[19:]


def user(store: Store, u: User, *, private: bool = False) -> dict[str, Any]:
    data = {
        "id": u.id, "username": u.username, "name": u.name, "state": "active",
        "locked": False, "avatar_url": None, "web_url": f"{store.base_url}/{u.username}",
    }
    if private:
        data.update({
            "created_at": ts(u.created_at), "bio": "", "location": "", "public_email": None,
            "email": u.email, "commit_email": u.email, "bot": False, "external": False,
            "two_factor_enabled": False, "private_profile": False, "is_admin": False,
        })
    return data


def namespace(store: Store, p: Project) -> dict[str, Any]:
    if p.group_id is not None:
        g = store.groups[p.group_id]
        return {"id": g.id, "name": g.name, "path": g.path, "kind": "group",
                "full_path": g.full_path, "parent_id": g.parent_id, "avatar_url": None,
                "web_url": f"{store.base_url}/groups/{g.full_path}"}
    owner = store.users[p.owner_id or 0]
    return {"id": owner.namespace_id, "name": owner.name, "path": owner.username,
            "kind": "user", "full_path": owner.username, "parent_id": None,
            "avatar_url": None, "web_url": f"{store.base_url}/{owner.username}"}


def _access(level: int) -> dict[str, int] | None:
    return {"access_level": level, "notification_level": NOTIFICATION_GLOBAL} if level else None


def _name_with_namespace(store: Store, p: Project) -> str:
    if p.group_id is None:
        return f"{store.users[p.owner_id or 0].name} / {p.name}"
    names = [g.name for g in reversed(store.ancestors(store.groups[p.group_id]))]
    return " / ".join([*names, p.name])


def project(store: Store, p: Project, viewer: User | None, *, simple: bool = False
            ) -> dict[str, Any]:
    web_url = f"{store.base_url}/{p.full_path}"
    data = {
        "id": p.id, "description": p.description, "name": p.name,
        "name_with_namespace": _name_with_namespace(store, p), "path": p.path,
        "path_with_namespace": p.full_path, "created_at": ts(p.created_at),
        "default_branch": p.default_branch, "tag_list": [], "topics": [],
        "ssh_url_to_repo": ssh_url(store, p),
        "http_url_to_repo": f"{web_url}.git", "web_url": web_url,
        "readme_url": None, "avatar_url": None, "forks_count": 0, "star_count": 0,
        "last_activity_at": ts(p.last_activity_at), "namespace": namespace(store, p),
    }
    if simple:
        return data
    direct = store.members.get(("project", p.id, viewer.id), 0) if viewer else 0
    if viewer is not None and p.owner_id == viewer.id:
        direct = max(direct, OWNER)
    # as GitLab's ProjectWithAccess: the user's own membership and that in the
    # project's group hierarchy; access through a share shows in neither (null)
    data.update({
        "visibility": p.visibility, "archived": False, "empty_repo": False,
        "updated_at": ts(p.last_activity_at), "owner": None,
        "permissions": {"project_access": _access(direct),
                        "group_access": _access(store.group_access_for_project(viewer, p))},
        "shared_with_groups": [shared_group(store, s) for s in store.project_shares(p)],
    })
    if p.owner_id is not None:
        data["owner"] = user(store, store.users[p.owner_id])
    return data


def shared_group(store: Store, s: Share) -> dict[str, Any]:
    g = store.groups[s.group_id]
    return {"group_id": g.id, "group_name": g.name, "group_full_path": g.full_path,
            "group_access_level": s.group_access,
            "expires_at": s.expires_at.isoformat() if s.expires_at else None}


def project_group_link(s: Share) -> dict[str, Any]:
    """What ``POST /projects/:id/share`` answers (GitLab's ProjectGroupLink)."""
    return {"id": s.id, "project_id": s.project_id,
            "group_id": s.group_id, "group_access": s.group_access,
            "expires_at": s.expires_at.isoformat() if s.expires_at else None}


def group(store: Store, g: Group) -> dict[str, Any]:
    names = [a.name for a in reversed(store.ancestors(g))]
    return {
        "id": g.id, "name": g.name, "path": g.path, "description": g.description,
        "visibility": g.visibility, "avatar_url": None,
        "web_url": f"{store.base_url}/groups/{g.full_path}", "full_name": " / ".join(names),
        "full_path": g.full_path, "parent_id": g.parent_id, "created_at": ts(g.created_at),
    }


def member(store: Store, u: User, level: int, since: datetime | None) -> dict[str, Any]:
    return {**user(store, u), "access_level": level, "created_at": ts(since),
            "expires_at": None, "membership_state": "active"}


def commit(store: Store, p: Project, c: Commit) -> dict[str, Any]:
    return {
        "id": c.sha, "short_id": c.sha[:8], "created_at": git_date(c.committed_date),
        "parent_ids": c.parents, "title": c.title, "message": c.message,
        "author_name": c.author_name, "author_email": c.author_email,
        "authored_date": git_date(c.authored_date), "committer_name": c.committer_name,
        "committer_email": c.committer_email,
        "committed_date": git_date(c.committed_date),
        "trailers": {}, "extended_trailers": {},
        "web_url": f"{store.base_url}/{p.full_path}/-/commit/{c.sha}",
    }


def branch(store: Store, p: Project, ref: Ref, *, merged: bool, can_push: bool
           ) -> dict[str, Any]:
    default = ref.name == p.default_branch
    return {
        "name": ref.name, "merged": merged, "protected": store.is_protected(p, ref.name),
        "developers_can_push": False, "developers_can_merge": False,
        "can_push": can_push, "default": default,
        "web_url": f"{store.base_url}/{p.full_path}/-/tree/{ref.name}",
        "commit": commit(store, p, ref.commit),
    }


def tag(store: Store, p: Project, ref: Ref) -> dict[str, Any]:
    return {
        "name": ref.name, "message": ref.tag_message or "", "target": ref.target,
        "commit": commit(store, p, ref.commit), "release": None, "protected": False,
        "created_at": git_date(ref.tagged_at) if ref.tagged_at else None,
    }


def deploy_key(k: DeployKey, can_push: bool) -> dict[str, Any]:
    return {
        "id": k.id, "title": k.title, "key": k.key, "fingerprint": k.fingerprint,
        "fingerprint_sha256": k.fingerprint_sha256, "usage_type": "auth_and_signing",
        "created_at": ts(k.created_at), "expires_at": ts(k.expires_at), "can_push": can_push,
    }


def ssh_url(store: Store, p: Project) -> str:
    """GitLab's ``ssh_url_to_repo``: the double's sshd once ``start_ssh()`` ran."""
    port = getattr(store, "ssh_port", None)
    host = getattr(store, "ssh_host", None) or "127.0.0.1"
    if port:
        return f"ssh://git@{host}:{port}/{p.full_path}.git"
    return f"git@{host}:{p.full_path}.git"
