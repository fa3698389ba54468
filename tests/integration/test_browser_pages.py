"""The pages in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no
browser download) against a real gunicorn (3 workers) and a real loopback file server.

Screenshots of every page land in test-artifacts/browser/ (git ignores it)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gunicorn_harness import ADMIN_PASSWORD, ROOT, IlgunServer

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "browser"
PASSWORD = "browser-test-pw-1"

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One gunicorn (3 workers) for the module: each test signs up users of its own."""
    server = IlgunServer(tmp_path_factory.mktemp("browser"), {"SLEEP_KIND_FOR_EVERYONE": "0"}, name="browser")
    server.prepare()
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", server
    finally:
        server.kill_group()


class Tab:
    """One browser context (its own cookies) with one page, recording console errors (a CSP
    violation is one) and page loads."""

    def __init__(self, browser, base: str, **context_options):
        self.base = base
        self.context = browser.new_context(**context_options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.loads = 0
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("load", lambda _p: setattr(self, "loads", self.loads + 1))

    def go(self, path: str):
        return self.page.goto(self.base + path)

    def shot(self, name: str, full_page: bool = True) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 1000
        return path

    def register(self, username: str) -> None:
        self.go("/register")
        self.page.fill("#username", username)
        self.page.fill("#password", PASSWORD)
        self.page.fill("#password_again", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.base + "/jobs")

    def sign_in(self, username: str, password: str = PASSWORD) -> None:
        self.go("/login")
        self.page.fill("#username", username)
        self.page.fill("#password", password)
        self.page.click("form.stack button[type=submit]")
        self.page.wait_for_url(re.compile(r".*/jobs.*|.*/admin$"))

    def close(self) -> None:
        self.context.close()


def test_register_submit_watch_progress_download_sign_out(browser, site, slow_files):
    base, _server = site
    tab = Tab(browser, base)
    tab.go("/login")
    tab.shot("01-sign-in")
    tab.register("alice")
    assert "No jobs" in tab.page.inner_text("main")
    tab.shot("02-my-jobs-empty")

    tab.page.click("text=New job")
    tab.shot("03-new-job")
    tab.page.click("a[href='/jobs/new/download']")
    url = slow_files.url("report.bin", seconds=4)
    tab.page.fill("#p-url", url)
    tab.page.fill("#p-filename", "report.bin")
    tab.shot("04-submit-download")
    tab.page.click("form.stack button[type=submit]")
    tab.page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}$"))
    job_url = tab.page.url
    tab.page.evaluate("window.__sameDocument = 'yes'")  # gone if the page reloads
    loads_before = tab.loads

    seen: list[float] = []
    shot_taken = False
    deadline_ms = 30_000
    while True:
        value = tab.page.evaluate("document.querySelector('#job progress').value")
        seen.append(value)
        if 0 < value < 100 and not shot_taken:
            tab.shot("05-job-running")
            shot_taken = True
        if value >= 100:
            break
        tab.page.wait_for_timeout(150)
        deadline_ms -= 150
        assert deadline_ms > 0, f"progress stuck: {seen[-5:]}"
    assert any(0 < v < 100 for v in seen), seen  # it moved through the middle, not 0 → 100 at once
    assert seen == sorted(seen), seen
    tab.page.wait_for_selector("#result-heading")  # the finished page's body, swapped in
    assert tab.page.evaluate("window.__sameDocument") == "yes" and tab.loads == loads_before
    assert tab.page.inner_text("[data-field=status]") == "Succeeded"
    tab.shot("06-job-succeeded")

    with tab.page.expect_download() as download:
        tab.page.click("ul.files a")
    saved = Path(download.value.path())
    expected = slow_files.for_path("report.bin")[-1].size
    assert download.value.suggested_filename == "report.bin" and saved.stat().st_size == expected

    tab.page.click("text=Sign out")
    tab.page.wait_for_url(base + "/login")
    assert tab.go("/jobs").url.startswith(base + "/login?next=")
    tab.go(job_url.removeprefix(base))
    assert "/login" in tab.page.url
    assert tab.errors == [], tab.errors
    tab.close()


def test_another_user_gets_a_404_page_and_a_post_without_csrf_is_refused(browser, site):
    base, server = site
    alice_token = server.register("erin")
    job_id = server.submit(alice_token, "download", {"url": f"{base}/healthz"})
    bob = Tab(browser, base)
    bob.register("bob")
    resp = bob.go(f"/jobs/{job_id}")
    assert resp.status == 404 and "Not found" in bob.page.inner_text("h1")
    assert job_id not in bob.page.content()
    bob.shot("07-other-users-job-404")

    # A post carrying bob's cookies but not the form's token: what a cross-site form would send.
    refused = bob.context.request.post(base + "/jobs/new/download", form={"url": f"{base}/healthz"},
                                       headers={"Accept": "text/html"})
    assert refused.status == 403 and "CSRF_FAILED" in refused.text()
    refused = bob.context.request.post(base + f"/jobs/{job_id}/cancel", form={"confirmed": "1"})
    assert refused.status == 403
    assert server.job(job_id, alice_token)["status"] in ("queued", "running", "succeeded")
    assert bob.context.request.get(base + "/api/v1/jobs").json()["data"]["items"] == []  # cookies work for the API
    bob.close()


def test_admin_dashboard_renders_its_chart(browser, site):
    base, server = site
    for _ in range(3):
        server.submit(server.admin_token, "sleep", {"duration": 0})
    admin = Tab(browser, base)
    admin.sign_in("admin", ADMIN_PASSWORD)
    resp = admin.go("/admin")
    assert resp.status == 200
    chart = admin.page.locator("svg.chart")
    assert chart.count() >= 1 and chart.first.is_visible()
    admin.page.wait_for_function("document.querySelectorAll('svg.chart rect').length > 0")
    assert admin.page.locator("table").count() >= 1
    admin.shot("08-admin-dashboard")
    assert admin.errors == [], admin.errors
    admin.close()


def test_pages_work_without_javascript_and_with_the_keyboard(browser, site):
    base, server = site
    tab = Tab(browser, base, java_script_enabled=False)
    tab.go("/register")
    for field, value in (("#username", "carol"), ("#password", PASSWORD), ("#password_again", PASSWORD)):
        tab.page.fill(field, value)
    tab.page.press("#password_again", "Enter")  # submitting with the keyboard
    tab.page.wait_for_url(base + "/jobs")
    tab.go("/jobs/new/cefr")
    tab.page.fill("#p-text", "The cat sat on the mat. It was happy.")
    tab.page.click("form.stack button[type=submit]")
    tab.page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}$"))
    job_id = tab.page.url.rsplit("/", 1)[1]
    server.wait_jobs([job_id], timeout=60, token=server.login("carol", PASSWORD))
    tab.page.reload()  # no script: the user reloads to see the result
    assert tab.page.inner_text("[data-field=status]") == "Succeeded"
    tab.shot("09-cefr-result-no-js")
    # cancel/delete ask on a page of their own when no script can show a dialog
    tab.page.click("form[data-confirm] button:text('Delete')")
    assert "Delete job" in tab.page.inner_text("h1")
    tab.page.click("text=Yes, delete")
    tab.page.wait_for_url(base + "/jobs")
    tab.close()


def test_keyboard_users_reach_every_control_and_a_phone_needs_no_sideways_scroll(browser, site):
    base, _server = site
    tab = Tab(browser, base, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    tab.register("dana")
    tab.go("/jobs/new/crawl")
    assert tab.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    tab.shot("10-phone-crawl-form")
    tab.go("/jobs")
    assert tab.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    tab.shot("11-phone-my-jobs")

    desk = Tab(browser, base)
    desk.sign_in("dana")
    desk.go("/jobs/new/download")
    focused = []
    for _ in range(30):
        desk.page.keyboard.press("Tab")
        focused.append(desk.page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
        if focused[-1] == "Submit":
            break
    assert focused[0] == "Skip to content" and "p-url" in focused and focused[-1] == "Submit", focused
    tab.close()
    desk.close()


def test_every_page_passes_axe_accessibility_checks(browser, site, slow_files):
    """axe-core (WCAG 2.x A/AA rules) on every kind of page, signed out and in, with a finished job
    of each kind that runs quickly here."""
    from axe_playwright_python.sync_playwright import Axe
    base, server = site
    axe = Axe()
    tab = Tab(browser, base)
    pages = ["/login", "/register", "/no/such/page"]
    found: dict[str, list[str]] = {}

    def check(path: str) -> None:
        tab.go(path)
        results = axe.run(tab.page).response["violations"]
        if results:
            found[path] = [f"{v['id']} ({v['impact']}): {v['nodes'][0]['html'][:120]}" for v in results]

    for path in pages:
        check(path)
    tab.register("fay")
    token = server.login("fay", PASSWORD)
    done = server.submit(token, "download", {"url": slow_files.url("a.bin", seconds=0.2)})
    graded = server.submit(token, "cefr", {"text": "I like my school. We read many books there."})
    server.wait_jobs([done, graded], timeout=60, token=token)
    for path in ["/jobs", "/jobs/new", *[f"/jobs/new/{k}" for k in ("download", "ocr", "report", "crawl", "cefr")],
                 f"/jobs/{done}", f"/jobs/{graded}"]:
        check(path)
    tab.close()
    admin = Tab(browser, base)
    admin.sign_in("admin", ADMIN_PASSWORD)
    tab = admin
    check("/admin")
    check("/jobs/new/sleep")
    admin.close()
    assert found == {}, found
