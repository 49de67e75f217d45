"""Booklab's pages in a real browser (Debian chromium + Playwright) against the real
hub, the GitLab double, real Redis, a real runner and Docker."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

import docker
from tests.conftest_hub import wait_ready
from tests.conftest_pages import (
    N_SCRATCH,
    PAGES_LABEL,
    PAGES_RUNNER,
    browser_login,
    click_sign_in,
    save_screenshot,
    sign_in_at_gitlab,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LAB_TIMEOUT = 300_000  # ms: a first build of the test image on a shared machine


def job_of(hub, user: str, server: str) -> str:
    """The id of the newest job of a user's server, from Redis."""
    job = hub.job_of(user, server)
    assert job, f"no job for {user}/{server}"
    return job["id"]


def check_pages_then_pick_for_screenshot(page, items) -> None:
    """Most recently active first, 20 a page; then the picker as the screenshot shows it."""
    expect(items.first).to_have_attribute("data-path", "demo/hello")  # most recently active
    expect(items).to_have_count(20)  # one page, not all of them
    page.click("#next-page")
    expect(page.locator("#page-label")).to_have_text("Page 2")
    expect(items).to_have_count(N_SCRATCH + 3 - 20)
    page.click("#prev-page")
    expect(page.locator("#page-label")).to_have_text("Page 1")
    items.first.click()
    page.locator("#ref-select").select_option("dev")
    save_screenshot(page, "picker.png")


def stop_from_picker(page, hub, server: str) -> None:
    """The picker lists the running server; its Stop button stops it."""
    page.goto(hub.url + "/hub/booklab/")
    row = page.locator(f"#running-servers tr[data-server={server}]")
    expect(row).to_contain_text("demo/hello")
    expect(row.get_by_role("link", name="Open")).to_have_attribute(
        "href", f"/user/alice/{server}/")
    row.get_by_role("button", name="Stop").click()
    page.wait_for_url(re.compile(r"/hub/booklab/$"))
    for _ in range(60):
        if row.count() == 0:
            break
        page.wait_for_timeout(1000)
        page.reload()
    expect(row).to_have_count(0)


def test_picker_search_branch_launch_live_log_then_lab(pages_hub, pages_runner, browser_page):
    page = browser_page
    browser_login(page, pages_hub, "alice", "alice-pw")

    items = page.locator(".booklab-project")
    check_pages_then_pick_for_screenshot(page, items)

    # GitLab data is shown as text, never as HTML
    page.fill("#project-search", "escaping")
    expect(items).to_have_count(1)
    expect(items.first).to_have_attribute("data-path", "demo/escaping")
    expect(items.first).to_contain_text('<b>not bold</b><img src=x onerror="x()">')
    expect(page.locator(".booklab-project b, .booklab-project img")).to_have_count(0)

    page.fill("#project-search", "hello")
    expect(items).to_have_count(1)
    expect(items.first).to_have_attribute("data-path", "demo/hello")
    items.first.click()
    select = page.locator("#ref-select")
    expect(select).to_be_enabled()
    expect(select).to_have_value("main")  # the default branch is preselected
    expect(page.locator("#ref-select optgroup[label=Tags] option")).to_have_text(["v1.0"])
    select.select_option("dev")
    link = page.locator("#launch-link")
    expect(link).to_have_value(re.compile(r"/hub/booklab/v2/gl/demo%2Fhello/dev$"))
    expect(page.locator("#badge-markdown")).to_have_value(re.compile(r"^\[!\[Launch on Booklab"))

    page.click("#launch-button")
    page.wait_for_url(re.compile(r"/hub/booklab/(build|jobs)/"))
    expect(page.locator("#build-log .log-line").first).to_be_visible(timeout=LAB_TIMEOUT)

    page.wait_for_url(re.compile(r"/user/alice/hello-dev-[0-9a-f]{6}/"), timeout=LAB_TIMEOUT)
    expect(page.get_by_text("dev.ipynb").first).to_be_visible(timeout=LAB_TIMEOUT)

    # the log stays readable once the server runs; the page no longer redirects
    server = re.search(r"/user/alice/([^/]+)/", page.url).group(1)
    page.goto(pages_hub.url + f"/hub/booklab/jobs/{job_of(pages_hub, 'alice', server)}")
    expect(page.locator("#build-done")).to_contain_text("ready")
    expect(page.locator("#build-log .state-line.running")).to_have_count(1)
    save_screenshot(page, "build-log.png")

    stop_from_picker(page, pages_hub, server)


def test_launch_link_logged_out_goes_through_login_to_labpath(
        pages_hub, pages_runner, browser_page):
    page = browser_page
    page.goto(pages_hub.url + "/hub/booklab/v2/gl/demo%2Fhello/main?labpath=hello.ipynb")
    click_sign_in(page)
    sign_in_at_gitlab(page, "alice", "alice-pw")
    # back at the link: it asks before it builds anything
    expect(page.locator("#confirm-project")).to_have_text("demo/hello")
    expect(page.locator("#confirm-target")).to_have_text("lab/tree/hello.ipynb")
    save_screenshot(page, "launch-confirm.png")
    page.click("#confirm-launch")
    page.wait_for_url(re.compile(r"/user/alice/hello-main-[0-9a-f]{6}/lab/tree/hello\.ipynb"),
                      timeout=LAB_TIMEOUT)
    notebook = page.locator(".jp-NotebookPanel .jp-RenderedMarkdown h1")
    expect(notebook).to_contain_text("Hello from Booklab", timeout=LAB_TIMEOUT)


def test_failing_build_shows_its_reason(pages_hub, pages_runner, browser_page):
    page = browser_page
    browser_login(page, pages_hub, "alice", "alice-pw")
    page.goto(pages_hub.url + "/hub/booklab/v2/gl/demo%2Fbroken/main")
    page.click("#confirm-launch")
    failed = page.locator("#build-failed")
    expect(failed).to_be_visible(timeout=LAB_TIMEOUT)
    expect(failed).to_contain_text("repo2docker failed")
    expect(page.locator("#build-log")).to_contain_text("this build fails on purpose")
    expect(page.locator("#build-state")).to_have_text("failed")
    save_screenshot(page, "build-failed.png")

    page.reload()  # now the job's own address: the log is still there after the failure
    expect(page).to_have_url(re.compile(r"/hub/booklab/jobs/"))
    expect(page.locator("#build-failed")).to_contain_text("repo2docker failed")
    expect(page.locator("#build-log")).to_contain_text("this build fails on purpose")


def test_admin_sees_runners_and_jobs_and_a_user_gets_403(pages_hub, pages_runner,
                                                          browser_page, chromium):
    session = pages_hub.login("alice", "alice-pw")  # alice has a server running
    token = pages_hub.user_token("alice")
    r = pages_hub.api("POST", "/users/alice/servers/hello", token=token,
                      json={"user_options": {"project": "demo/hello", "ref": "main"}})
    assert r.status_code in (201, 202), r.text
    wait_ready(pages_hub, "alice", "hello")  # a running server: its cancel is a stop

    page = browser_page
    browser_login(page, pages_hub, "admin", "admin-pw")
    page.click("#nav-booklab-admin")
    runner = page.locator(f"#runners tr[data-runner={PAGES_RUNNER}]")
    expect(runner).to_contain_text("alive", timeout=60_000)
    expect(runner).to_contain_text("/ 1")
    # what it offers: the operator's label and the facts it read from Docker
    labels = runner.locator(".runner-labels")
    expect(labels.locator('[data-label="site"]')).to_have_text(PAGES_LABEL)
    ncpu = docker.from_env().info()["NCPU"]
    expect(labels.locator('[data-label="cpus"]')).to_have_text(f"cpus={ncpu}")
    expect(labels.locator('[data-label="memory"]')).to_contain_text(" GiB")
    expect(labels.locator('[data-label="gpus"]')).to_have_text("gpus=0")
    job = page.locator("#jobs tbody tr", has_text="alice")
    expect(job).to_contain_text("demo/hello")
    save_screenshot(page, "admin.png")

    job.get_by_role("button", name="Cancel").click()  # stops alice's server through the hub
    expect(page.locator(".alert-info")).to_contain_text("Stopping alice's server hello")
    for _ in range(60):
        if "stopped" in job.inner_text():
            break
        page.wait_for_timeout(1000)
        page.reload()
    expect(job.locator(".badge")).to_have_text("stopped")
    assert "hello" not in pages_hub.api("GET", "/users/alice").json()["servers"]

    assert session.get(pages_hub.url + "/hub/booklab/admin", timeout=30).status_code == 403
    bob = chromium.new_context()
    try:
        bob_page = bob.new_page()
        browser_login(bob_page, pages_hub, "bob", "bob-pw")
        expect(bob_page.locator("#nav-booklab-admin")).to_have_count(0)
        resp = bob_page.goto(pages_hub.url + "/hub/booklab/admin")
        assert resp.status == 403
        expect(bob_page.locator("body")).to_contain_text("Only Booklab administrators")
    finally:
        bob.close()
