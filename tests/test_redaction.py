"""``embedcache.config``'s URL redaction: what may be shown of a URL, and its secrets."""

from __future__ import annotations

import pytest

from embedcache.config import redact_text, redact_url, url_secrets, without_userinfo


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:PW@host:8080/v1", "http://***@host:8080/v1"),
        ("https://user@host", "https://***@host"),  # a user name alone may be a token
        ("http://:PW@host", "http://***@host"),
        ("http://user:P%40W@host/", "http://***@host/"),  # an encoded "@" in the password
        ("http://user:PW@[::1]:8080/v1", "http://***@[::1]:8080/v1"),
        ("http://user:PW@[fe80::1%25eth0]/", "http://***@[fe80::1%25eth0]/"),
        ("user:PW@host:8080/v1", "***@host:8080/v1"),  # no scheme
        ("//user:PW@host/v1", "//***@host/v1"),  # scheme-relative
        ("redis://:PW@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("unix:///run/redis.sock?db=0&password=PW", "unix:///run/redis.sock?db=0&password=***"),
        ("http://host/v1?token=PW#top", "http://host/v1?token=***#top"),
    ],
)
def test_credentials_in_a_url_are_replaced_and_the_rest_is_kept(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "https://api.jina.ai",
        "http://[::1]:8080/v1",
        "http://host/users/@me",  # "@" in the path
        "http://host/v1?next=a@b.example",  # "@" in the query
        "http://host?mail=x@y",  # a query straight after the authority
        "http://host#a@b",  # and a fragment
        "host/path@x?q=a@b",  # no scheme, "@" only after the authority
        "http://host/v1?next=http://user:PW@x",  # a URL in the query is no userinfo here
        "",
    ],
)
def test_a_url_without_credentials_is_shown_as_given(url: str) -> None:
    assert redact_url(url) == url
    assert without_userinfo(url) == url


def test_redacting_twice_changes_nothing_more() -> None:
    once = redact_url("http://user:PW@host/?password=PW")
    assert redact_url(once) == once


def test_without_userinfo_keeps_host_port_path_and_query() -> None:
    assert without_userinfo("http://user:PW@[::1]:8080/v1?x=1") == "http://[::1]:8080/v1?x=1"
    assert without_userinfo("user:PW@host") == "host"


def test_the_secrets_of_a_url_are_its_userinfo_password_and_credential_parameters() -> None:
    assert url_secrets("http://user:P%40W@host/") == {"user:P%40W", "user:P@W", "P%40W", "P@W"}
    assert url_secrets("http://tok3n@host/") == {"tok3n"}
    assert url_secrets("redis://host/0?password=PW&db=1") == {"PW"}
    assert url_secrets("http://host/users/@me?next=a@b") == frozenset()


def test_text_with_a_url_and_its_secrets_keeps_neither() -> None:
    url = "http://user:P%40W@host:1"
    text = f"cannot reach {url}/v1/embeddings (as user:P@W, password P%40W)"
    cleaned = redact_text(text, url)
    assert cleaned == "cannot reach http://***@host:1/v1/embeddings (as ***, password ***)"
    assert redact_text("nothing secret", "http://host") == "nothing secret"
