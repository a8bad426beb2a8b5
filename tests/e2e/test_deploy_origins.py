"""`pier deploy` from every origin, for a new name and for an existing one, and a routes-only
deploy as proxiML's endpoints are, all through the CLI: one platform, several model APIs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest

from infra.supervisor import Platform
from pier.client import ApiError, Client
from pier.config import Settings
from tests.e2e.conftest import EXAMPLES, TOKEN, pier


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # file:// is allowed only for tests; the platform passes its settings to every service.
    return msgspec.structs.replace(settings, git_schemes="https,ssh,file")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo, capture_output=True, check=True
    )


def _commit(repo: Path, answer: str, tag: str | None = None) -> None:
    (repo / "predict.py").write_text(f"def predict():\n    return {answer!r}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", answer)
    if tag:
        _git(repo, "tag", tag)


def _folder(path: Path, answer: str) -> str:
    path.mkdir(exist_ok=True)
    (path / "predict.py").write_text(f"def predict():\n    return {answer!r}\n")
    return str(path)


async def _deploy_each(platform: Platform, deploys: dict[str, list[str]]) -> dict[str, str]:
    """Run `pier deploy ... --name NAME` for each name at once (their builds overlap); each must
    succeed. What each printed, by name."""

    def deploy(name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        return pier(platform, "deploy", *args, "--name", name, "--unrestricted", "--instances", "1")

    done = await asyncio.gather(*(asyncio.to_thread(deploy, name, args) for name, args in deploys.items()))
    for name, finished in zip(deploys, done, strict=True):
        assert finished.returncode == 0, f"{name}:\n{finished.stdout}{finished.stderr}"
        assert "Traceback" not in finished.stderr
    return {name: finished.stdout for name, finished in zip(deploys, done, strict=True)}


def _served(client: Client, name: str) -> tuple[Any, int]:
    answer = client.predict(name, data={})
    return answer["result"], answer["release"]["model_version_number"]


def _post(url: str, payload: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.timeout(900)
async def test_every_origin_deploys_a_new_model_api_and_a_new_version_through_the_cli(
    platform: Platform, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _commit(repo, "A", tag="v1")
    _commit(repo, "B", tag="v2")
    _commit(repo, "C")  # the default branch's head
    url = f"file://{repo}"
    shared = tmp_path / "shared"
    pushed = pier(platform, "sources", "push", _folder(shared, "source-1"), "--name", "shared")
    assert pushed.returncode == 0, pushed.stderr

    printed = await _deploy_each(
        platform,
        {
            "folder": [_folder(tmp_path / "folder", "folder-1")],
            "fromsource": ["--source", "shared"],
            "gitdefault": ["--git", url],
            "gitref": ["--git", url, "--ref", "v1"],
            # proxiML style: the folder's routes.yaml, no --file, so no Domino entry.
            "routed": [str(EXAMPLES / "routes")],
        },
    )
    client = Client(platform.settings.api_url, TOKEN, platform.settings.gateway_url)
    assert _served(client, "folder") == ("folder-1", 1)
    assert _served(client, "fromsource") == ("source-1", 1)
    assert _served(client, "gitdefault") == ("C", 1)
    assert _served(client, "gitref") == ("A", 1)

    pushed = pier(platform, "sources", "push", _folder(shared, "source-2"), "--name", "shared")
    assert pushed.returncode == 0, pushed.stderr
    await _deploy_each(
        platform,
        {
            "folder": [_folder(tmp_path / "folder", "folder-2")],
            "fromsource": ["--source", "shared"],
            "gitdefault": ["--git", url, "--ref", "v2"],  # once: got multiple values for argument 'ref'
            "gitref": ["--git", url],
        },
    )
    assert _served(client, "folder") == ("folder-2", 2)
    assert _served(client, "fromsource") == ("source-2", 2)
    assert _served(client, "gitdefault") == ("B", 2)
    assert _served(client, "gitref") == ("C", 2)
    refs = [(v["number"], v["ref"]) for v in client.api("GET", "/models/gitdefault/versions")]
    assert refs == [(2, "v2"), (1, None)]

    assert f"using the routes in {EXAMPLES / 'routes' / 'routes.yaml'}" in printed["routed"]
    base = f"{platform.settings.gateway_url}/models/routed/latest"
    assert f"POST {base}/classify" in printed["routed"] and f"{base}/model" not in printed["routed"]

    assert _post(f"{base}/predict", {"x": 2, "y": 1})["result"] == {"value": 5}
    assert _post(f"{base}/classify", {"text": "a great day", "threshold": 0.3})["result"]["positive"] is True
    with pytest.raises(ApiError) as domino:
        client.predict("routed", data={"x": 1})
    message = domino.value.problem["error"]["message"]
    assert domino.value.status == 404
    assert "no /model endpoint" in message and "POST /classify" in message and "GET /stats" in message
    assert client.model("routed")["versions"][0]["entrypoint"].get("file") is None
