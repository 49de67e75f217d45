"""The runner's guards on where a fetch goes: a clone URL must be the configured
GitLab's, an SSH URL nothing ssh could read as an option, the hub's proxy URL a
plain http(s) URL (tables of (input, accepted?), as oauthenticator's tests do)."""

from __future__ import annotations

import pytest

from booklab_spawner.exceptions import FetchFailed
from booklab_spawner.runner.fetch import check_clone_url, check_proxy_url, check_ssh_url

GITLAB = "https://gitlab.example.org"


@pytest.mark.parametrize("url,ok", [
    (f"{GITLAB}/group/project.git", True),
    (f"{GITLAB}/group/sub/project.git", True),
    ("http://gitlab.example.org/group/project.git", False),  # the scheme differs
    ("https://evil.example/group/project.git", False),
    ("https://gitlab.example.org.evil.example/g/p.git", False),  # a look-alike host
    ("https://gitlab.example.org:444/g/p.git", False),  # another port
    ("https://oauth2:tok@gitlab.example.org/g/p.git", False),  # userinfo
    ("https://x@gitlab.example.org/g/p.git", False),
    ("file:///etc/passwd", False),
    ("ext::sh -c touch% /tmp/pwned", False),
    ("ssh://git@gitlab.example.org/g/p.git", False),
    ("", False),
])
def test_a_clone_url_must_be_the_configured_gitlab(url, ok):
    if ok:
        assert check_clone_url(url, GITLAB) == url
    else:
        with pytest.raises(FetchFailed, match="refusing"):
            check_clone_url(url, GITLAB)


def test_without_a_configured_gitlab_nothing_is_cloned():
    with pytest.raises(FetchFailed):
        check_clone_url(f"{GITLAB}/g/p.git", "")


@pytest.mark.parametrize("url,ok", [
    ("git@gitlab.example.org:group/project.git", True),
    ("ssh://git@gitlab.example.org/group/project.git", True),
    ("ssh://git@gitlab.example.org:2222/group/sub/project.git", True),
    ("ssh://-oProxyCommand=touch /tmp/pwned/x.git", False),
    ("-oProxyCommand=touch:x.git", False),
    ("ssh://git@-F/x.git", False),  # a host ssh reads as an option
    ("git@-F:x.git", False),
    ("-F@gitlab.example.org:x.git", False),  # a user ssh reads as an option
    ("ssh://-F@gitlab.example.org/x.git", False),
    ("git@gitlab.example.org:-x/p.git", False),  # a path git-upload-pack reads as one
    ("git@gitlab.example.org:g/../../etc.git", False),
    ("ssh://git@gitlab.example.org/g/p.git;touch x", False),
    ("git@gitlab.example.org:g/p.git\n", False),
    ("", False),
])
def test_an_ssh_url_is_one_of_gitlabs_shapes_and_no_option(url, ok):
    if ok:
        assert check_ssh_url(url) == url
    else:
        with pytest.raises(FetchFailed, match="refusing"):
            check_ssh_url(url)


@pytest.mark.parametrize("hub_url,ok", [
    ("http://10.0.0.2:8081/hub/", True),
    ("https://hub.example.org/hub", True),
    ("http://user:pw@10.0.0.2:8081/hub/", False),
    ("http://10.0.0.2:8081/hub/?x=1", False),
    ("http://10.0.0.2:8081/hub/#x", False),
    ("file:///hub/", False),
    ("", False),
])
def test_the_proxy_url_is_a_plain_http_url_for_one_job(hub_url, ok):
    if ok:
        assert check_proxy_url(hub_url, "j1") == hub_url.rstrip("/") + "/booklab/git/j1"
    else:
        with pytest.raises(FetchFailed, match="refusing"):
            check_proxy_url(hub_url, "j1")
