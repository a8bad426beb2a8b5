"""How the builder runs git: ssh with nothing of the builder's own (~/.ssh keys, agent, config,
known hosts), and no connection to private addresses unless an admin allows their range.

ssh here is the real OpenSSH client asked for the configuration it would connect with
(`ssh -G`), through a wrapper first on PATH that records it: no ssh server runs in the tests.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from pier import git as pier_git
from pier.events import GitSource
from services.builder.git import GitError, fetch

SCHEMES = ["https", "ssh"]
LOOPBACK: list[pier_git.Network] = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.fixture
def recorded_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the wrapper writes the configuration ssh would have used."""
    real = shutil.which("ssh")
    if real is None:
        pytest.skip("no OpenSSH client on this machine")
    bin_dir, record = tmp_path / "bin", tmp_path / "ssh-config.txt"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\n"{real}" -G "$@" > "{record}" 2>&1\nexit 1\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(real).parent}:/usr/bin:/bin")
    return record


async def _fetch(
    tmp_path: Path, url: str, credential: str | None = None, allowed: list[pier_git.Network] = LOOPBACK
) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)

    async def say(_: str) -> None:
        return None

    source = GitSource(url=url, credential=credential)
    await fetch(source, work, tmp_path / "artifacts", 30.0, say, SCHEMES, allowed)


def _config(record: Path) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in record.read_text().splitlines():
        key, _, value = line.partition(" ")
        options.setdefault(key, []).append(value)
    return options


async def test_ssh_without_a_credential_offers_no_key_of_the_builders(tmp_path: Path, recorded_ssh: Path) -> None:
    with pytest.raises(GitError):
        await _fetch(tmp_path, "ssh://git@127.0.0.1/repo.git")
    used = _config(recorded_ssh)
    assert used["identityfile"] == [str(tmp_path / "work" / "no-key")]  # not ~/.ssh/id_*
    assert used["identitiesonly"] == ["yes"] and used["identityagent"] == ["none"]
    assert used["userknownhostsfile"] == [str(tmp_path / "work" / "known_hosts")]
    assert used["globalknownhostsfile"] == ["/dev/null"] and used["batchmode"] == ["yes"]
    assert "~/.ssh" not in recorded_ssh.read_text() and str(Path.home() / ".ssh") not in recorded_ssh.read_text()


async def test_ssh_with_a_credential_offers_that_key_only(tmp_path: Path, recorded_ssh: Path) -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-but-long-enough\n-----END OPENSSH PRIVATE KEY-----"
    pier_git.save_credential(tmp_path / "artifacts", pier_git.Credential(name="deploy", ssh_key=key))
    with pytest.raises(GitError):
        await _fetch(tmp_path, "git@127.0.0.1:repo.git", credential="deploy")
    used = _config(recorded_ssh)
    assert used["identityfile"] == [str(tmp_path / "work" / "deploy_key")]
    assert used["identitiesonly"] == ["yes"] and used["identityagent"] == ["none"]


@pytest.mark.parametrize("url", ["https://127.0.0.1/repo.git", "ssh://git@192.168.0.10/r.git", "https://[fe80::1]/r"])
async def test_the_builder_refuses_a_private_address_before_git_runs(
    tmp_path: Path, recorded_ssh: Path, url: str
) -> None:
    with pytest.raises(GitError, match="PIER_GIT_ALLOW_NETWORKS"):
        await _fetch(tmp_path, url, allowed=[])
    assert not recorded_ssh.exists()
