"""The "Save to GitLab" page in Chromium: from the picker's server row, review the changed
files, edit branch and message, save, and follow the link to the commit."""

from __future__ import annotations

import json
import re

import pytest
import redis as syncredis
import requests
from playwright.sync_api import expect

from tests.conftest_hub import wait_gone, wait_ready
from tests.conftest_pages import (
    PagesHub,
    browser_login,
    running_pages_runner,
    save_screenshot,
)
from tests.conftest_stack import running_hub

pytestmark = [pytest.mark.docker, pytest.mark.slow]
LAB_TIMEOUT = 300_000  # ms


def edit_in_jupyterlab(page, hub) -> None:
    """Open hello.ipynb in JupyterLab, add a line to its markdown cell, save with Ctrl+S."""
    page.goto(hub.url + "/user/alice/hello/lab/tree/hello.ipynb")
    cell = page.locator(".jp-Notebook .jp-Cell").first
    expect(cell).to_be_visible(timeout=LAB_TIMEOUT)
    dialog = page.locator(".jp-Dialog")
    page.wait_for_timeout(1500)  # the kernel dialog, if any, comes after the notebook
    if dialog.count():
        dialog.locator(".jp-Dialog-button.jp-mod-reject, .jp-Dialog-button").first.click()
    cell.click()
    page.keyboard.press("Enter")  # edit mode
    page.keyboard.press("Control+End")
    page.keyboard.type("\n\nEdited in JupyterLab")
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    expect(page.locator(".jp-mod-dirty")).to_have_count(0, timeout=30_000)


def test_review_edit_and_save_from_the_page(pages_hub, pages_runner, browser_page):
    hub, gl, page = pages_hub, pages_hub.gitlab, browser_page
    browser_login(page, hub, "alice", "alice-pw")
    token = hub.user_token("alice")
    r = hub.api("POST", "/users/alice/servers/hello", token=token,
                json={"user_options": {"project": "demo/hello", "ref": "main"}})
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, "alice", "hello")
    r = requests.put(hub.proxied("/user/alice/hello/api/contents/results.md"),
                     headers={"Authorization": f"token {token}"},
                     json={"type": "file", "format": "text", "content": "42\n"}, timeout=30)
    assert r.status_code == 201, r.text

    edit_in_jupyterlab(page, hub)

    page.goto(hub.url + "/hub/booklab/")
    row = page.locator("#running-servers tr[data-server=hello]")
    row.get_by_role("link", name="Save to GitLab").click()
    page.wait_for_url(re.compile(r"/hub/booklab/save/hello$"))
    expect(page.locator("#changed-files tbody tr")).to_have_count(2)
    expect(page.locator("#changed-files tr[data-path='results.md']")).to_contain_text("create")
    expect(page.locator("#changed-files tr[data-path='hello.ipynb']")).to_contain_text("update")
    expect(page.locator("#save-branch")).to_have_value("booklab/alice/hello")
    page.fill("#save-branch", "alice/results")
    page.fill("#save-message", "Results of <today>")
    save_screenshot(page, "save.png")
    page.click("#save-submit")

    expect(page.locator("#save-result")).to_contain_text("Saved 2 file(s) to new branch "
                                                         "alice/results")
    sha = gl.head("demo/hello", "alice/results")
    assert sha and gl.changed_paths("demo/hello", sha) == [("M", "hello.ipynb"),
                                                           ("A", "results.md")]
    saved = json.loads(gl.files_at("demo/hello", sha)["hello.ipynb"])  # valid JSON
    assert "Edited in JupyterLab" in "".join(saved["cells"][0]["source"])
    expect(page.locator("#save-commit-link")).to_have_attribute(
        "href", f"{gl.url}/demo/hello/-/commit/{sha}")
    expect(page.locator("#save-branch-link")).to_have_attribute(
        "href", f"{gl.url}/demo/hello/-/tree/alice/results")
    commit = requests.get(f"{gl.url}/api/v4/projects/demo%2Fhello/repository/commits/{sha}",
                          headers={"Private-Token": gl.issue_token("alice")["access_token"]},
                          timeout=10).json()
    assert commit["message"].strip() == "Results of <today>"  # as typed, not HTML-escaped

    # a refusal keeps the form, with GitLab's reason, to try another branch
    gl.protect_branch("demo/hello", "locked")
    page.goto(hub.url + "/hub/booklab/save/hello")
    page.fill("#save-branch", "locked")
    page.click("#save-submit")
    expect(page.locator("#save-error")).to_contain_text("GitLab refused the save")
    expect(page.locator("#save-branch")).to_have_value("locked")
    assert gl.head("demo/hello", "locked") is None

    # bob gets 404 for alice's server
    page.context.clear_cookies()
    browser_login(page, hub, "bob", "bob-pw")
    resp = page.goto(hub.url + "/hub/booklab/save/hello")
    assert resp.status == 404


@pytest.fixture
def autosave_hub(pages_gitlab, redis_server, runner_token, tmp_path, request):
    syncredis.Redis.from_url(redis_server.url).flushdb()
    yield from running_hub(PagesHub(tmp_path / "hub", pages_gitlab, redis_server.url,
                                    runner_token, overrides={"save": {"autosave": True}}),
                           request)


@pytest.fixture
def autosave_runner(autosave_hub, redis_server, runner_token, tmp_path, pages_docker, request):
    yield from running_pages_runner(autosave_hub, redis_server, runner_token, tmp_path,
                                    request)


def test_the_picker_offers_the_autosave_branch_and_an_opt_out(
        autosave_hub, autosave_runner, browser_page):
    hub, gl, page = autosave_hub, autosave_hub.gitlab, browser_page
    branch = "booklab/alice/hello-autosave"
    gl.commit("demo/hello", branch, {"saved.md": "autosaved\n"}, message="Autosave")
    gl.commit("demo/hello", "booklab/bob/hello-autosave", {"bob.md": "bob's\n"})
    browser_login(page, hub, "alice", "alice-pw")
    page.goto(hub.url + "/hub/booklab/")
    page.fill("#project-search", "hello")
    items = page.locator(".booklab-project")
    expect(items).to_have_count(1)
    items.first.click()
    expect(page.locator("#ref-select")).to_have_value("main")
    offer = page.locator("#autosave-offer")
    expect(offer).to_be_visible()
    expect(page.locator("#autosave-branch")).to_have_text(branch)  # hers, never bob's
    page.click("#autosave-continue")
    expect(page.locator("#ref-select")).to_have_value(branch)
    expect(page.locator("#launch-link")).to_have_value(
        re.compile(r"/v2/gl/demo%2Fhello/booklab%2Falice%2Fhello-autosave$"))

    checkbox = page.locator("#autosave-check")
    expect(checkbox).to_be_checked()  # on unless she says otherwise
    checkbox.uncheck()
    page.click("#launch-button")
    page.wait_for_url(re.compile(r"/user/alice/hello-booklab-"), timeout=LAB_TIMEOUT)
    servers = hub.api("GET", "/users/alice").json()["servers"]
    [(name, model)] = [(n, s) for n, s in servers.items()
                       if s["user_options"].get("ref") == branch]
    assert model["user_options"]["autosave"] is False
    token = hub.user_token("alice")
    r = requests.get(hub.proxied(f"/user/alice/{name}/api/contents/saved.md"),
                     headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text  # the autosaved work is there
    job = hub.job_of("alice", name)["id"]
    assert hub.api("DELETE", f"/users/alice/servers/{name}").status_code in (202, 204)
    wait_gone(hub, "alice", name)
    messages = [f.get("message", "") for _, f in hub.redis().xrange(hub.keys.log(job))]
    assert "Autosave: off for this server" in messages
