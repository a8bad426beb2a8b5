"""Deploying from git (a real repository made here, served as file://) and from a named source."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgspec
import pytest

from infra.supervisor import Platform
from pier.client import ApiError, Client
from pier.config import Settings
from tests.e2e.conftest import TOKEN, pier

ENTRY = {"file": "predict.py", "function": "predict"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # file:// is allowed only for tests; the platform passes its settings to every service.
    return msgspec.structs.replace(settings, git_schemes="https,ssh,file")


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _repo(tmp_path: Path, answer: int) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "predict.py").write_text(f"def predict():\n    return {answer}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")
    return repo


async def test_deploy_from_a_git_tag_records_the_commit_and_a_later_push_needs_a_new_version(
    platform: Platform, tmp_path: Path
) -> None:
    repo = _repo(tmp_path, 1)
    _git(repo, "tag", "v1")
    tagged = _git(repo, "rev-parse", "HEAD")
    url = f"file://{repo}"

    client = _client(platform)
    # Created through the API to make it unrestricted; `pier deploy --git` makes version 2 below.
    client.create_model({"name": "fromgit", "git": url, "ref": "v1", "access": "unrestricted", **ENTRY})
    assert client.wait("fromgit", 1, timeout=180)["state"] == "running"
    assert client.predict("fromgit", data={})["result"] == 1
    shown = json.loads(pier(platform, "show", "fromgit", "--json").stdout)
    assert shown["versions"][0]["commit"] == tagged and shown["versions"][0]["git"] == url
    listed = pier(platform, "versions", "fromgit")
    assert f"{url}@{tagged[:12]}" in listed.stdout

    (repo / "predict.py").write_text("def predict():\n    return 2\n")
    _git(repo, "commit", "-qam", "second")
    pushed = _git(repo, "rev-parse", "HEAD")
    assert client.predict("fromgit", data={})["result"] == 1  # a push alone changes nothing

    done = pier(platform, "deploy", "--git", url, "--name", "fromgit")
    assert done.returncode == 0, done.stdout + done.stderr
    assert client.predict("fromgit", data={})["result"] == 2
    versions = client.api("GET", "/models/fromgit/versions")
    assert [(v["number"], v["commit"]) for v in versions] == [(2, pushed), (1, tagged)]


async def test_a_ref_that_does_not_exist_fails_the_version_with_gits_message(
    platform: Platform, tmp_path: Path
) -> None:
    repo = _repo(tmp_path, 1)
    client = _client(platform)
    client.create_model(
        {"name": "badref", "git": f"file://{repo}", "ref": "no-such-tag", "access": "unrestricted", **ENTRY}
    )
    model = client.wait("badref", 1, timeout=120)
    assert model["state"] == "failed"
    assert "no-such-tag" in model["reason"] and "git: fatal:" in model["reason"]


async def test_refused_schemes_and_dash_refs_are_400s_naming_the_field(platform: Platform, tmp_path: Path) -> None:
    client = _client(platform)
    base = {**ENTRY, "access": "unrestricted"}
    with pytest.raises(ApiError) as refused:
        client.create_model({"name": "ftp", "git": "ftp://example.com/r.git", **base})
    assert refused.value.status == 400
    assert refused.value.problem["errors"][0]["field"] == "git"
    assert "https, ssh, file" in refused.value.problem["detail"]
    with pytest.raises(ApiError) as dashed:
        client.create_model(
            {"name": "dash", "git": f"file://{tmp_path}", "ref": "--upload-pack=touch /tmp/pwned", **base}
        )
    assert dashed.value.status == 400 and dashed.value.problem["errors"][0]["field"] == "ref"
    with pytest.raises(ApiError) as both:
        client.create_model({"name": "both", "git": f"file://{tmp_path}", "source": "abc", **base})
    assert both.value.status == 400


async def test_a_named_source_deploys_to_two_model_apis(platform: Platform, tmp_path: Path) -> None:
    code = tmp_path / "shared"
    code.mkdir()
    (code / "predict.py").write_text("def predict():\n    return 'shared'\n")
    pushed = pier(platform, "sources", "push", str(code), "--name", "shared")
    assert pushed.returncode == 0, pushed.stderr
    client = _client(platform)
    for name in ("first", "second"):
        client.create_model({"name": name, "source_name": "shared", "access": "unrestricted", **ENTRY})
        assert client.wait(name, 1, timeout=180)["state"] == "running"
        assert client.predict(name, data={})["result"] == "shared"
    # And through the CLI, as a new version of one of them.
    done = pier(platform, "deploy", "--source", "shared", "--name", "first")
    assert done.returncode == 0, done.stdout + done.stderr
    listed = pier(platform, "sources", "list")
    assert listed.stdout.startswith("shared")
    versions = _client(platform).api("GET", "/models/second/versions")
    assert versions[0]["source_name"] == "shared"


LIST_DIR = """import os


def predict():
    found = []
    for folder, dirs, files in os.walk("."):
        dirs[:] = [d for d in dirs if d != "__pycache__"]  # Python's own, written at import
        found += [os.path.relpath(os.path.join(folder, f)) for f in files]
    return sorted(found)
"""


async def test_files_a_modelignore_excludes_are_not_in_the_instances_working_dir(
    platform: Platform, tmp_path: Path
) -> None:
    code = tmp_path / "ignoring"
    (code / "data").mkdir(parents=True)
    (code / "predict.py").write_text(LIST_DIR)
    (code / "data" / "train.csv").write_text("a,b\n1,2\n")
    (code / "notes.secret").write_text("do not ship")
    (code / "keep.txt").write_text("shipped")
    (code / ".modelignore").write_text("data/\n*.secret\n")
    client = _client(platform)
    client.create_model({"name": "ignoring", "source": client.upload_source(code), "access": "unrestricted", **ENTRY})
    assert client.wait("ignoring", 1, timeout=180)["state"] == "running"
    assert client.predict("ignoring", data={})["result"] == [".modelignore", "keep.txt", "predict.py"]
