"""A hostile page on another site, in a real browser (Chromium) where alice is logged
in to the hub: its link to a launch link only brings up the confirmation page, and
its auto-submitting form (a cross-site POST without the hub's XSRF token) is
refused. Nothing is queued either way; alice's own click on the confirmation
page launches."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from tests.conftest_pages import browser_login

pytestmark = [pytest.mark.slow]

LINK = "/hub/booklab/v2/gl/demo%2Fhello/dev?labpath=dev.ipynb"


@pytest.fixture
def evil_site(pages_hub):
    """A page on http://localhost:<port> (another site than the hub's 127.0.0.1)."""
    target = pages_hub.url + LINK
    pages = {
        "/link": f'<a id="go" href="{target}">Free notebooks!</a>',
        "/post": f'<form id="f" method="post" action="{target}"></form>'
                 '<script>document.getElementById("f").submit()</script>',
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()


def queued_jobs(hub) -> list[str]:
    return [job["id"] for job in hub.jobs()]


def test_hostile_site_cannot_launch_but_alice_can_confirm(pages_hub, evil_site, browser_page):
    page = browser_page
    browser_login(page, pages_hub, "alice", "alice-pw")

    # an auto-submitting cross-site form: refused, nothing queued
    page.goto(evil_site + "/post")
    page.wait_for_url(re.compile(re.escape(pages_hub.url)))
    expect(page.locator("body")).to_contain_text("403")
    page.wait_for_timeout(2000)
    assert queued_jobs(pages_hub) == []

    # a link from the other site: the hub asks first
    page.goto(evil_site + "/link")
    page.click("#go")
    page.wait_for_url(re.compile(re.escape(pages_hub.url + "/hub/booklab/v2/gl/")))
    expect(page.locator("#confirm-project")).to_have_text("demo/hello")
    expect(page.locator("#confirm-ref")).to_have_text("dev")
    page.wait_for_timeout(2000)
    assert queued_jobs(pages_hub) == []
    assert pages_hub.api("GET", "/users/alice").json()["servers"] == {}

    # alice's own click launches
    page.click("#confirm-launch")
    page.wait_for_url(re.compile(r"/hub/booklab/(jobs|build)/"))
    expect(page.locator("#build-log .state-line.queued")).to_have_count(1)
    assert len(queued_jobs(pages_hub)) == 1
