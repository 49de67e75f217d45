"""The picker offers the launch profiles, in a real browser (Debian chromium +
Playwright) against the real hub, the GitLab double, real Redis and a real runner
whose label (``site=pages-test``) satisfies one profile and not another."""

from __future__ import annotations

import re

import pytest
import redis as syncredis
from playwright.sync_api import expect

from tests.conftest_pages import (
    PAGES_RUNNER,
    PagesHub,
    browser_login,
    running_pages_runner,
)
from tests.conftest_stack import running_hub

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROFILES = [
    {"name": "pages", "description": "The pages runner", "labels": {"site": "pages-test"},
     "mem_limit": "1G"},
    {"name": "gpu", "description": "One A100", "labels": {"gpu": "a100"}, "gpus": 1},
]


@pytest.fixture
def profiles_hub(pages_gitlab, redis_server, runner_token, tmp_path, request):
    syncredis.Redis.from_url(redis_server.url).flushdb()
    hub = PagesHub(tmp_path / "hub", pages_gitlab, redis_server.url, runner_token,
                   {"profiles": PROFILES})
    yield from running_hub(hub, request)


@pytest.fixture
def profiles_runner(profiles_hub, redis_server, runner_token, tmp_path, pages_docker,
                    request):
    yield from running_pages_runner(profiles_hub, redis_server, runner_token, tmp_path,
                                    request)


def test_the_picker_offers_profiles_refuses_one_and_queues_the_other(
        profiles_hub, profiles_runner, browser_page):
    page = browser_page
    hub = profiles_hub
    browser_login(page, hub, "alice", "alice-pw")
    page.fill("#project-search", "hello")
    page.locator(".booklab-project[data-path='demo/hello']").click()
    select = page.locator("#profile-select")
    expect(select.locator("option")).to_have_text(
        ["default — Default: any runner", "pages — The pages runner", "gpu — One A100"])
    page.locator("#ref-select").select_option("main")

    # the share link names the profile
    select.select_option("gpu")
    expect(page.locator("#launch-link")).to_have_value(
        re.compile(r"/hub/booklab/v2/gl/demo%2Fhello/main\?profile=gpu$"))

    # no live runner has a GPU: refused with a page that says why, nothing queued
    expect(page.locator("#launch-button")).to_be_enabled()
    page.click("#launch-button")
    expect(page.locator("body")).to_contain_text("No live runner can take launch profile "
                                                 "'gpu' (it needs gpu=a100, 1 GPU(s)")
    assert hub.job_of("alice", "demo-hello-main") is None or \
        hub.job_of("alice", "demo-hello-main").get("profile") != "gpu"

    # the launch link with ?profile=gpu: the confirmation names it, the launch is refused
    page.goto(f"{hub.url}/hub/booklab/v2/gl/demo%2Fhello/main?profile=gpu")
    expect(page.locator("#confirm-profile")).to_have_text("gpu")
    expect(page.locator("#booklab-confirm")).to_contain_text("One A100")
    page.click("#confirm-launch")
    expect(page.locator("body")).to_contain_text("No live runner can take launch profile "
                                                 "'gpu'")

    # the pages runner's label satisfies "pages": the launch lands there with its limit
    page.goto(f"{hub.url}/hub/booklab/")
    page.fill("#project-search", "hello")
    page.locator(".booklab-project[data-path='demo/hello']").click()
    page.locator("#profile-select").select_option("pages")
    page.click("#launch-button")
    page.wait_for_url(re.compile(r"/hub/booklab/jobs/"))
    job = hub.job_of("alice", page_server(hub))
    assert (job["profile"], job["mem_limit"]) == ("pages", "1G")
    for _ in range(120):
        job = hub.job_of("alice", page_server(hub))
        if job.get("runner"):
            break
        page.wait_for_timeout(500)
    assert job["runner"] == PAGES_RUNNER


def page_server(hub) -> str:
    """The name of alice's one server (named after project and ref)."""
    (name,) = {j["server_name"] for j in hub.jobs() if j.get("user") == "alice"}
    return name
