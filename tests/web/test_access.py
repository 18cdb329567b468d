"""Who gets in: an administrator logs in to the console; a wrong password, a form without its CSRF token, a
cookie on the API and a token without the scope are refused."""

from __future__ import annotations

from tests.web.conftest import ADMIN, ADMIN_PASSWORD, WebNode, csrf_of


def test_an_administrator_logs_in_and_sees_the_dashboard(web: WebNode) -> None:
    client = web.client()
    assert client.get("/").status_code == 303  # not signed in: to the login page
    answer = web.post_form(client, "/login", {"username": ADMIN, "password": ADMIN_PASSWORD})
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "mailfleet_session=" in cookie and "secure" in cookie and "httponly" in cookie
    assert "samesite=strict" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "Dashboard" in page.text and ADMIN in page.text


def test_a_wrong_password_is_refused_with_the_form_again(web: WebNode) -> None:
    client = web.client()
    response = web.post_form(client, "/login", {"username": ADMIN, "password": "wrong"})
    assert response.status_code == 401 and "Login failed" in response.text
    assert client.get("/").status_code == 303


def test_a_form_without_its_csrf_token_is_refused(web: WebNode) -> None:
    client = web.login()
    assert client.post("/logout", data={}).status_code == 403
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/").status_code == 200  # still signed in: the forged logouts did nothing
    assert client.post("/logout", data={"csrf": csrf_of(client.get("/").text)}).status_code == 303
    assert client.get("/").status_code == 303


def test_every_page_carries_the_strict_content_security_policy(web: WebNode) -> None:
    headers = web.client().get("/login").headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_a_user_who_is_not_an_administrator_sees_only_their_own_page(web: WebNode) -> None:
    web.add_user("bob@example.org", "bob's long password")
    client = web.login("bob@example.org", "bob's long password")
    assert client.get("/").status_code == 403
    me = client.get("/me")
    assert me.status_code == 200 and "bob@example.org" in me.text
