"""``hub.subdomain_host``: a launch on the real stack (hub + Traefik with Host rules, a
runner, Docker, Chromium) serves the notebook from the person's own host
(``alice.hub.localhost``), never from the hub's origin, and Booklab's pages,
links and redirects follow it there."""

from __future__ import annotations

import re

import pytest
import yaml
from playwright.sync_api import expect
from traitlets.config import Config

from booklab_hub.config import ConfigError, apply, load
from tests.conftest_pages import click_sign_in, sign_in_at_gitlab

GOOD = {
    "gitlab": {"url": "https://gitlab.example.org", "client_id": "id", "client_secret": "s"},
    "runners": {"token": "x" * 40},
}

LAB_TIMEOUT = 300_000  # ms: a first build of the test image on a shared machine

# run in the notebook's page: can its code read the hub's pages with the person's cookies?
READ_HUB = """async (url) => {
  try {
    const r = await fetch(url, {credentials: "include"});
    return "read " + r.status + " " + (await r.text()).slice(0, 80);
  } catch (e) {
    return "blocked";
  }
}"""


def settings(tmp_path, hub: dict) -> dict:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({**GOOD, "hub": hub}))
    return load(str(path), environ={})


def test_subdomain_host_maps_onto_jupyterhub_and_the_oauth_callback(tmp_path):
    c = Config()
    apply(c, settings(tmp_path, {"subdomain_host": "https://hub.example.org/"}))
    assert c.JupyterHub.subdomain_host == "https://hub.example.org"
    assert c.BooklabGitLabAuthenticator.oauth_callback_url == \
        "https://hub.example.org/hub/oauth_callback"
    assert c.JupyterHub.named_server_limit_per_user == 3  # the default
    c = Config()
    apply(c, settings(tmp_path, {"named_server_limit_per_user": 0}))
    assert "subdomain_host" not in c.JupyterHub and c.JupyterHub.named_server_limit_per_user == 0


@pytest.mark.parametrize("hub", [
    {"subdomain_host": "hub.example.org"},  # no scheme
    {"subdomain_host": "https://hub.example.org/prefix"},  # a path: JupyterHub needs none
    {"named_server_limit_per_user": -1},
])
def test_bad_subdomain_settings_name_their_key(tmp_path, hub):
    with pytest.raises(ConfigError) as exc:
        settings(tmp_path, hub)
    assert f"hub.{next(iter(hub))}" in str(exc.value)


@pytest.mark.docker
@pytest.mark.slow
def test_launch_through_subdomain_host_serves_notebook_on_users_own_host(
        subdomain_hub, subdomain_runner, browser_page):
    hub, page = subdomain_hub, browser_page
    alice_host = hub.user_host("alice")

    page.goto(hub.public_url + "/")
    click_sign_in(page)
    sign_in_at_gitlab(page, "alice", "alice-pw")
    page.wait_for_url(re.compile(re.escape(hub.public_url) + r"/hub/booklab/?$"))

    # the share link names the hub's public host
    page.locator(".booklab-project[data-path='demo/hello']").click()
    expect(page.locator("#launch-link")).to_have_value(
        hub.public_url + "/hub/booklab/v2/gl/demo%2Fhello/main")

    link = hub.public_url + "/hub/booklab/v2/gl/demo%2Fhello/main?labpath=hello.ipynb"
    page.goto(link)
    page.click("#confirm-launch")
    page.wait_for_url(re.compile(re.escape(hub.public_url) + r"/hub/booklab/(jobs|build)/"))
    # the build log follows into the server: on alice's host, not the hub's
    lab = re.compile(re.escape(alice_host) + r"/user/alice/(hello-main-[0-9a-f]{6})/lab/tree/"
                     r"hello\.ipynb")
    page.wait_for_url(lab, timeout=LAB_TIMEOUT)
    expect(page.locator(".jp-NotebookPanel .jp-RenderedMarkdown h1")).to_contain_text(
        "Hello from Booklab", timeout=LAB_TIMEOUT)
    server = lab.search(page.url).group(1)
    assert page.evaluate("location.origin") == alice_host

    # code in the notebook cannot read the hub's pages or API with alice's login
    for path in ("/hub/booklab/api/projects", "/hub/api/user", "/hub/booklab/"):
        assert page.evaluate(READ_HUB, hub.public_url + path) == "blocked", path
    # (control: the hub's own origin can read them)
    page.goto(hub.public_url + "/hub/booklab/")
    assert page.evaluate(READ_HUB, hub.public_url + "/hub/booklab/api/projects"
                         ).startswith("read 200")

    # the picker's Open link and the launch link of a running server go to alice's host
    row = page.locator(f"#running-servers tr[data-server={server}]")
    expect(row.get_by_role("link", name="Open")).to_have_attribute(
        "href", f"{alice_host}/user/alice/{server}/")
    page.goto(link)
    page.wait_for_url(lab)

    # the hub's origin does not serve the notebook: it sends the browser to alice's host
    cookie = "; ".join(f"{c['name']}={c['value']}"
                       for c in page.context.cookies(hub.public_url + "/hub/"))
    path, hops = f"/user/alice/{server}/api/status", []
    for _ in range(5):
        r = hub.get("hub.localhost", path, allow_redirects=False, headers={"Cookie": cookie})
        hops.append((r.status_code, r.headers.get("Location", "")))
        assert r.status_code in (301, 302, 303, 307), hops
        location = r.headers["Location"]
        if not location.startswith(("/", hub.public_url + "/")):
            break
        path = location.removeprefix(hub.public_url)
    assert location.startswith(f"{alice_host}/user/alice/{server}/"), hops
    # and alice's host is routed to her server (the notebook answers, asking for login)
    r = hub.get("alice.hub.localhost", f"/user/alice/{server}/api/status",
                allow_redirects=False)
    assert r.status_code in (302, 403), (r.status_code, r.text[:300])
    assert "hub.localhost" in r.headers.get("Location", "") or r.status_code == 403
