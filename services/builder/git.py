"""Fetching a source from git: the repository at a ref becomes a tarball in the artifact store.

git always runs as an argument list, never through a shell, with the user's URL and ref after
`--` or in positions git cannot read as options; a URL or ref starting with `-` is refused before
git runs (the checks live in pier.git, shared with the api). Credentials are looked up by name in
the artifact store and handed to git through its environment (never its arguments, which other
users of the host can read), and every line git prints is scrubbed of them before it reaches the
build log.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pier.events import GitSource
from pier.git import Network, load_credential, network_problem, ref_problem, url_problem
from services.builder.errors import BuildError
from services.builder.processes import LineSink, ProcessTimeout, run

_SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")


class GitError(BuildError):
    """The repository cannot be fetched at that ref: git's own message, for the user."""


@dataclass(frozen=True)
class Fetched:
    tarball: bytes
    commit: str


class Scrubbed:
    """A line sink that replaces every secret with *** before passing the line on."""

    def __init__(self, on_line: LineSink, secrets: list[str]) -> None:
        self.on_line = on_line
        self.secrets = [s for s in secrets if s]

    def clean(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line

    async def __call__(self, line: str) -> None:
        await self.on_line(self.clean(line))


async def fetch(
    source: GitSource,
    work: Path,
    artifacts: Path,
    timeout: float,
    on_line: LineSink,
    schemes: list[str],
    allowed: list[Network],
) -> Fetched:
    """Fetch `source` into `work` (an empty folder) and return the tree at the ref as a .tar.gz."""
    problem = url_problem(source.url, schemes)
    if problem:
        raise GitError(f"git URL {problem}")
    if problem := await asyncio.to_thread(network_problem, source.url, allowed):
        raise GitError(f"git URL {problem}")
    if source.ref is not None and (problem := ref_problem(source.ref)):
        raise GitError(f"git ref {problem}")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),  # no user-level git config of the builder's host applies
        "GIT_TERMINAL_PROMPT": "0",  # a missing credential fails instead of waiting for a password
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ALLOW_PROTOCOL": ":".join(schemes),  # submodules and redirects stay within the allowed schemes
        "LANG": "C",
        # A redirect could lead to an address the network check above refused.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.followRedirects",
        "GIT_CONFIG_VALUE_0": "false",
        "GIT_SSH_COMMAND": _ssh_command(work, None),
    }
    secrets: list[str] = []
    if source.credential:
        try:
            credential = load_credential(artifacts, source.credential)
        except ValueError as exc:
            raise GitError(f"git credential: {exc}") from None
        if credential is None:
            raise GitError(f"no git credential named {source.credential!r} is registered")
        if credential.token:
            basic = base64.b64encode(f"{credential.username}:{credential.token}".encode()).decode()
            secrets += [credential.token, basic]
            # Through the environment, not `-c` on the command line, which `ps` shows to anyone.
            env.update(
                GIT_CONFIG_COUNT="2",
                GIT_CONFIG_KEY_1="http.extraHeader",
                GIT_CONFIG_VALUE_1=f"Authorization: Basic {basic}",
            )
        if credential.ssh_key:
            key = work / "deploy_key"
            key.write_text(credential.ssh_key.rstrip("\n") + "\n")
            key.chmod(0o600)
            secrets += [line for line in credential.ssh_key.splitlines() if len(line) > 16]
            env["GIT_SSH_COMMAND"] = _ssh_command(work, key)
    say = Scrubbed(on_line, secrets)
    repo = work / "repo"
    repo.mkdir()

    async def git(*args: str, quiet: bool = False) -> list[str]:
        async def drop(_: str) -> None:
            return None

        try:
            finished = await run(["git", *args], drop if quiet else say, timeout=timeout, cwd=repo, env=env)
        except ProcessTimeout as exc:
            raise GitError(f"git {args[0]} {exc}") from None
        if finished.returncode != 0:
            raise GitError(_git_error([say.clean(line) for line in finished.lines]))
        return finished.lines

    await git("init", "--quiet")
    await git("remote", "add", "origin", "--", source.url, quiet=True)
    shown = f"{source.url} at {source.ref}" if source.ref else f"{source.url} (default branch)"
    await say(f"fetching {shown}")
    wanted = source.ref or "HEAD"
    try:
        await git("fetch", "--quiet", "--depth", "1", "--no-tags", "origin", "--", wanted)
    except GitError:
        if source.ref is None or not _SHA_RE.match(source.ref):
            raise
        # A commit sha the server will not serve shallowly (an abbreviated one, or a server that
        # refuses unadvertised objects): fetch everything and look for it.
        await say(f"{source.ref} is not fetchable alone; fetching the whole repository")
        await git("fetch", "--quiet", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*")
        wanted = source.ref
    else:
        wanted = "FETCH_HEAD"
    lines = await git("rev-parse", "--verify", "--end-of-options", f"{wanted}^{{commit}}", quiet=True)
    commit = lines[-1].strip()
    await say(f"fetched commit {commit}")
    archive = work / "source.tar.gz"
    await git("archive", "--format=tar.gz", f"--output={archive}", commit, quiet=True)
    return Fetched(tarball=archive.read_bytes(), commit=commit)


def _ssh_command(work: Path, key: Path | None) -> str:
    """ssh that uses the registered key and nothing of the builder's: OpenSSH reads ~/.ssh from
    the password database, not $HOME, so its config, agent, default keys and known hosts are
    each switched off by option. There is no registry of host keys yet: each fetch starts from an
    empty known-hosts file of its own and accepts the host's key (docs/builds.md says so).
    git runs this through sh; it holds only paths Pier chose, never user input."""
    known_hosts = work / "known_hosts"
    known_hosts.touch()
    identity = shlex.quote(str(key)) if key is not None else shlex.quote(str(work / "no-key"))
    options = [
        "-F /dev/null",
        f"-o IdentityFile={identity}",
        "-o IdentitiesOnly=yes",
        "-o IdentityAgent=none",
        f"-o UserKnownHostsFile={shlex.quote(str(known_hosts))}",
        "-o GlobalKnownHostsFile=/dev/null",
        "-o StrictHostKeyChecking=accept-new",
        "-o BatchMode=yes",
    ]
    return "ssh " + " ".join(options)


def _git_error(lines: list[str]) -> str:
    """git's own message: its `fatal:`/`error:` lines, which name the URL or ref."""
    stripped = [line.strip() for line in lines if line.strip()]
    errors = [line for line in stripped if line.startswith(("fatal:", "error:"))]
    return "git: " + " ".join(errors or stripped[-2:] or ["exited with an error and no output"])
