"""The console in a real browser (Chromium): the login page, a signed-in dashboard, no console error from the
Content-Security-Policy (a blocked style or script would show up there)."""

from __future__ import annotations

from tests.web.conftest import ADMIN, ADMIN_PASSWORD, WebNode


def test_an_administrator_logs_in_with_chromium(web: WebNode, browser_factory, screenshot) -> None:
    browser = browser_factory(trust=[web.cert])
    page = browser.new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if message.type == "error" else None)
    page.goto(web.url + "/")
    assert page.url.startswith(web.url + "/login")
    page.fill("input[name=username]", ADMIN)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(web.url + "/")
    assert page.text_content("h1") == "Dashboard"
    screenshot(page, "dashboard")
    assert refused == []
