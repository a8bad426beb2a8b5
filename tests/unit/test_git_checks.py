"""Kept: what a git URL or ref may be before git ever sees it, and the networks setting."""

from __future__ import annotations

import pytest

from pier import git

SCHEMES = ["https", "ssh"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "must not be empty"),
        ("--upload-pack=touch /tmp/x", "start with '-'"),
        ("-oProxyCommand=x@h:r", "start with '-'"),
        ("ext::sh -c touch% /tmp/x", "spaces or control"),
        ("ext::sh", "scheme 'ext' is not allowed"),
        ("file:///etc", "scheme 'file' is not allowed"),
        ("http://example.com/r.git", "scheme 'http' is not allowed"),
        ("fd::17", "scheme 'fd' is not allowed"),
        ("https://example.com/r.git\n", "control"),
        ("https://user:hunter2@example.com/r.git", "must not embed a password"),
        ("/local/path", "scheme (none)"),
    ],
)
def test_unsafe_or_unlisted_git_urls_are_refused_naming_why(url: str, problem: str) -> None:
    found = git.url_problem(url, SCHEMES)
    assert found is not None and problem.replace("(none)", "'(none)'") in found


@pytest.mark.parametrize("url", ["https://example.com/r.git", "ssh://git@example.com/r.git", "git@example.com:r.git"])
def test_ordinary_git_urls_pass(url: str) -> None:
    assert git.url_problem(url, SCHEMES) is None


@pytest.mark.parametrize("ref", ["", "-b", "--upload-pack=x", "a b", "a..b", "x.lock", "main/", "a\x00b"])
def test_refs_git_could_read_as_options_or_that_are_not_refs_are_refused(ref: str) -> None:
    assert git.ref_problem(ref) is not None


def test_the_allowed_networks_setting_names_a_bad_entry() -> None:
    assert [str(n) for n in git.parse_networks(" 10.0.0.0/8, 127.0.0.1 ,fd00::/8")] == [
        "10.0.0.0/8",
        "127.0.0.1/32",
        "fd00::/8",
    ]
    with pytest.raises(ValueError, match=r"'10\.0\.0/33'"):
        git.parse_networks("10.0.0.0/8,10.0.0/33")
