"""The dashboard in Chromium on a whole platform: what a user does there, page by page.

Playwright's `expect` polls each assertion until it holds or its deadline passes, so nothing here
sleeps; each page's screenshot is written under tests/browser/artifacts/."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import aiohttp
import msgspec
import pytest
from playwright.async_api import Page, expect

from infra.supervisor import Platform
from pier.config import Settings
from tests.browser.conftest import PASSWORD, Admin, Browsers, shot
from tests.support import until

CODE = """
def predict(n=0):
    print(f"call {n}", flush=True)
    return {"n": n}
"""
START = 120_000  # ms: a build and an instance start, on a busy machine


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two simulated a100 GPUs on one node, declared before the platform starts."""
    return msgspec.structs.replace(settings, gpus="a100:2")


async def _sign_in(page: Page, platform: Platform, name: str) -> None:
    """With the keyboard alone: the name field has the focus, Tab goes to the password, Enter signs in."""
    await page.goto(platform.settings.api_url + "/")
    await expect(page.get_by_role("heading", name="Sign in to Pier")).to_be_visible()
    await expect(page.get_by_label("Name")).to_be_focused()
    await page.keyboard.type(name)
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Password")).to_be_focused()
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.locator("#whoami")).to_have_text(f"Signed in as {name}")


async def _create(
    page: Page, name: str, *, gpus: int = 0, advanced: bool = False, folder: Path | None = None, routes: int = 0
) -> None:
    """Through the form to its review page (not confirmed yet), from the source `hello` or a folder;
    `routes` routes /r0, /r1, ... are added, and the last is moved to the top."""
    await page.get_by_role("link", name="New model API").first.click()
    await page.get_by_label("Name", exact=True).fill(name)
    if folder is None:
        await page.get_by_label("A registered source").check()
        await page.get_by_label("Registered source", exact=True).select_option("hello")
    else:
        await page.get_by_label("Upload a folder").check()
        await page.get_by_label("Folder", exact=True).set_input_files(folder)
    if gpus:
        await page.get_by_label("GPUs per instance").select_option(str(gpus))
        await page.locator("[data-gpu=a100] input").check()
    await page.get_by_label("Instances").fill("1")
    await page.get_by_label("Entry file").fill("predict.py")
    await page.get_by_label("Entry function").fill("predict")
    for n in range(routes):
        await page.get_by_role("button", name="Add a route").click()
        row = page.locator(f"[data-route='{n}']")
        await row.get_by_label("Path").fill(f"/r{n}")
        await row.get_by_label("File").fill("predict.py")
        await row.get_by_label("Function").fill("predict")
    if routes > 1:
        await page.get_by_role("button", name=f"Move route {routes} up").click()
    if advanced:
        await page.get_by_label("Routing mode").select_option("advanced")
    await page.get_by_role("button", name="Review").click()
    await expect(page.get_by_role("heading", name=f"Review {name}")).to_be_visible()


async def _refused(platform: Platform, name: str, token: str) -> bool:
    """Whether the gateway refuses `token` now (401)."""
    url = f"{platform.settings.gateway_url}/models/{name}/latest/model"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"data": {}}, headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        return answer.status == 401


async def _call(platform: Platform, name: str, token: str, n: int) -> dict[str, object]:
    url = f"{platform.settings.gateway_url}/models/{name}/latest/model"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"data": {"n": n}}, headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return dict(await answer.json())


async def test_a_user_creates_calls_updates_and_terminates_a_model_api_in_the_dashboard(
    browsers: Browsers, platform: Platform, admin: Admin, tmp_path: Path
) -> None:
    ada = await admin.user("ada")
    await admin.source("hello", CODE, ada)
    ada_browser = await browsers("ada")
    page = await ada_browser.new_page()

    await page.goto(platform.settings.api_url + "/")
    await expect(page.get_by_role("heading", name="Sign in to Pier")).to_be_visible()
    await shot(page, "01-sign-in")
    await _sign_in(page, platform, "ada")
    await expect(page.locator("#live")).to_have_text(re.compile("Live"))
    await shot(page, "02-model-list-empty")

    # Create: a GPU count no node has is disabled with the reason; nothing exists before Confirm.
    await page.get_by_role("link", name="New model API").first.click()
    await page.get_by_label("GPUs per instance").select_option("4")
    a100 = page.locator("[data-gpu=a100]")
    await expect(a100.locator("input")).to_be_disabled()
    await expect(a100).to_contain_text("needs 4 on one node; its nodes have at most 2")
    await page.get_by_label("GPUs per instance").select_option("1")
    await expect(a100.locator("input")).to_be_enabled()
    await expect(a100).to_contain_text("2 free / 2 total")
    await page.get_by_label("Period").fill("1")
    await expect(page.locator("#health-rule")).to_contain_text("must be greater than the request timeout")
    await page.get_by_label("Period").fill("")
    await expect(page.locator("#health-rule")).to_be_empty()
    await shot(page, "03-create-form")
    await page.get_by_role("button", name="Review").click()
    await expect(page.locator("[data-error-for=name]")).to_contain_text("lower-case letters")
    # An error of the plan's (the api's) is shown next to its field too.
    await page.get_by_label("Name", exact=True).fill("hello")
    await page.get_by_label("Entry file").fill("predict.py")
    await page.get_by_label("Entry function").fill("predict")
    await page.get_by_label("Quota").fill("huge")
    await page.get_by_role("button", name="Review").click()
    await expect(page.locator("[data-error-for=quota]")).to_contain_text("no quota named 'huge'")
    await page.get_by_label("Quota").fill("")

    await _create(page, "hello", advanced=True)
    await expect(page.locator("#plan")).to_contain_text("It will start now")
    await expect(page.locator("#spec")).to_contain_text("routing_mode")
    await shot(page, "04-review")
    assert await admin.call("GET", "/v1/models", key=ada) == []
    await page.get_by_role("button", name="Confirm").click()

    # Detail: live state until running, with Connect snippets for both Domino formats.
    await expect(page.get_by_role("heading", name="hello", exact=True)).to_be_visible()
    await expect(page.locator("#model-state [data-state]")).to_have_text("running", timeout=START)
    # The usage follows the state: the page was drawn while it built, and counts the instance now.
    await expect(page.locator("#usage")).to_contain_text("1 running now")
    await expect(page.locator("#connect")).to_contain_text('{"parameters":[1]}')
    await expect(page.locator("#connect")).to_contain_text("Authorization: Bearer $PIER_TOKEN")
    await page.get_by_role("button", name="Promote version 1 to prod").click()
    await expect(page.locator("[data-version='1'] [data-labels]")).to_have_text("latest, prod")

    # A token, shown once, kept in this tab for the tester.
    await page.get_by_label("New token's name").fill("ci")
    await page.get_by_role("button", name="Create token").click()
    secret = await page.locator("#new-token").inner_text()
    assert len(secret) >= 20, secret
    await shot(page, "05-detail")
    await page.reload()
    await expect(page.locator("[data-token=ci]")).to_contain_text("active")
    await expect(page.locator("#new-token")).to_have_count(0)

    # Tester: the Domino format through the gateway with the token made above.
    await page.get_by_role("link", name="Tester").click()
    await page.get_by_label("Body (JSON)").fill(json.dumps({"data": {"n": 7}}))
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#tester-status")).to_contain_text("200 in")
    await expect(page.locator("#tester-body-out")).to_contain_text('"n": 7')
    await shot(page, "06-tester")
    await expect(page.locator("#history")).to_have_count(0)  # nothing of the page left before
    await page.get_by_label("Body (JSON)").fill(json.dumps({"nothing": 1}))
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#tester-status")).to_have_attribute("data-status", "400")
    await expect(page.locator("#tester-meaning")).to_contain_text("Bad request")
    await page.get_by_label("Body (JSON)").fill(json.dumps({"data": {"m": 1}}))
    await page.get_by_label("Token", exact=True).select_option("none")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#tester-status")).to_have_attribute("data-status", "401")

    # Logs: a line written while the page is open appears at the top, without a reload.
    await page.goto(platform.settings.api_url + "/#/m/hello/logs")
    await page.get_by_role("tab", name="Instance").click()
    lines = page.locator("#log div")
    await expect(lines.filter(has_text="call 7")).to_have_count(1)
    await _call(platform, "hello", secret, 8)
    await expect(lines.filter(has_text="call 8")).to_have_count(1)
    order = "box => ['call 8', 'call 7'].map(t => [...box.children].findIndex(d => d.textContent.includes(t)))"
    newer, older = await page.locator("#log").evaluate(order)
    assert newer < older, "the new line is not above the older ones"
    # More lines than a page (100): the newest page on opening, older ones on scrolling down.
    for n in range(100, 220):
        await _call(platform, "hello", secret, n)
    await expect(lines.filter(has_text="call 219")).to_have_count(1)
    await page.reload()
    await page.get_by_role("tab", name="Instance").click()
    await expect(lines.filter(has_text="call 219")).to_have_count(1)
    await expect(lines.filter(has_text="call 7")).to_have_count(0)
    for _ in range(10):  # each scroll to the bottom loads the next older page
        if await lines.filter(has_text="call 7").count():
            break
        shown = await lines.count()
        await page.locator("#log").evaluate("box => { box.scrollTop = box.scrollHeight }")
        await expect(lines).not_to_have_count(shown)
    await expect(lines.filter(has_text="call 7")).to_have_count(1)
    await page.get_by_role("tab", name="Deployment").click()
    await expect(page.locator("#log div").first).to_be_visible()
    await shot(page, "07-logs")

    # Version 2 from a .zip (a top folder, deflated, as "Compress" makes one: unpacked and packed
    # as a tarball in the page), promoted to prod once it serves: in another tab of the same
    # session, which makes changes as well as the first.
    archive = tmp_path / "hello.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("hello/predict.py", CODE)
        zipped.writestr("__MACOSX/hello/._predict.py", b"\0\5\26\7")
    page = await ada_browser.new_page()
    await page.goto(platform.settings.api_url + "/#/m/hello")
    await page.get_by_label("From").select_option("tarball")
    await page.get_by_label("Or an archive").set_input_files(archive)
    await page.get_by_role("button", name="Deploy", exact=True).click()
    await expect(page.locator("#said")).to_have_text("Version 2 is building.")
    await expect(page.locator("[data-version='2'] [data-labels]")).to_have_text("latest", timeout=START)
    await page.get_by_role("button", name="Promote version 2 to prod").click()
    await expect(page.locator("[data-version='2'] [data-labels]")).to_have_text("latest, prod")
    await expect(page.locator("[data-version='1'] [data-labels]")).to_have_text("")
    await page.get_by_role("link", name="Model APIs", exact=True).click()
    await expect(page.locator("[data-model=hello] [data-versions]")).to_have_text("latest v2, prod v2")
    await page.get_by_role("link", name="hello", exact=True).click()

    # Revoke the token; then terminate, typing the name.
    await page.get_by_role("button", name="Revoke token ci").click()
    await expect(page.locator("#said")).to_have_text("Token ci revoked.")
    await expect(page.locator("[data-token=ci]")).to_have_count(0)
    await until(lambda: _refused(platform, "hello", secret), within=10)
    await page.get_by_role("button", name="Terminate", exact=True).click()
    confirm = page.get_by_role("button", name="Terminate for good")
    await expect(confirm).to_be_disabled()
    await page.get_by_label("Type hello to terminate it").fill("hello")
    await shot(page, "08-terminate")
    await confirm.click()
    await expect(page.get_by_role("heading", name="Model APIs")).to_be_visible()
    await expect(page.locator("[data-model=hello]")).to_have_count(0)

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in to Pier")).to_be_visible()
    await page.goto(platform.settings.api_url + "/#/models")
    await expect(page.get_by_role("heading", name="Sign in to Pier")).to_be_visible()


async def test_a_waiting_model_api_shows_its_place_in_line_and_a_viewer_sees_no_management(
    browsers: Browsers, platform: Platform, admin: Admin, tmp_path: Path
) -> None:
    ada = await admin.user("ada")
    bob = await admin.user("bob")
    await admin.source("hello", CODE, ada)
    entry = {"source_name": "hello", "file": "predict.py", "function": "predict", "instances": 1}
    await admin.call("POST", "/v1/models", {"name": "holder", "gpu_type": "a100", "gpu_count": 2, **entry}, key=ada)
    await admin.call("PUT", "/v1/models/holder/collaborators/bob", {"role": "viewer"}, key=ada)
    page = await (await browsers("ada")).new_page()
    await _sign_in(page, platform, "ada")
    await expect(page.locator("[data-model=holder] [data-state]")).to_have_text("running", timeout=START)

    # From a folder, packed in the browser: it builds, then waits.
    code = tmp_path / "code"
    (code / "lib").mkdir(parents=True)
    (code / "predict.py").write_text("from lib.helper import VALUE\n\n\ndef predict():\n    return VALUE\n")
    (code / "lib" / "helper.py").write_text("VALUE = 42\n")
    await _create(page, "second", gpus=2, folder=code, routes=2)
    await expect(page.locator("#spec")).to_contain_text('"path":"/r1"')
    spec = await page.locator("#spec").inner_text()
    assert spec.index('"/r1"') < spec.index('"/r0"'), spec
    await expect(page.locator("#plan")).to_have_attribute("data-decision", "wait")
    await expect(page.locator("#plan")).to_contain_text("2 of 2 a100 GPUs are in use")
    await expect(page.locator("#plan")).to_contain_text("place in line: 1")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#model-place")).to_have_text(" #1 in line", timeout=START)
    await expect(page.locator("#connect")).to_contain_text("POST /r1")
    await page.get_by_role("link", name="Model APIs", exact=True).click()
    await expect(page.locator("[data-model=second] [data-place]")).to_have_text("#1 in line")
    await expect(page.locator("[data-model=second] [data-state]")).to_have_text("waiting")
    await shot(page, "09-model-list-waiting")
    await page.get_by_role("link", name="GPUs").click()
    await expect(page.locator("[data-gpu=a100]")).to_contain_text("a100")
    await expect(page.locator("#waiting")).to_contain_text("second")
    await shot(page, "10-gpus")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.get_by_role("link", name="Model APIs", exact=True).click()
    await expect(page.locator("[data-model=holder]")).to_be_visible()
    await shot(page, "11-model-list-390px")

    # The viewer, signed in with an API key: the model API is shown, none of its controls.
    viewer = await (await browsers("bob")).new_page()
    await viewer.goto(platform.settings.api_url + "/")
    await viewer.get_by_label("API key", exact=True).fill(bob)
    await viewer.get_by_role("button", name="Sign in with the key").click()
    await expect(viewer.locator("#whoami")).to_have_text("Signed in as bob")
    await viewer.get_by_role("link", name="holder").click()
    await expect(viewer.locator("#model-state")).to_contain_text("running")
    await expect(viewer.locator("#versions")).to_contain_text("v1")
    await expect(viewer.locator("#connect")).to_be_visible()
    for control in ("#stop", "#restart", "#terminate", "#deploy-form", "#settings-form", "#tokens", "#share-form"):
        await expect(viewer.locator(control)).to_have_count(0)
    await expect(viewer.get_by_role("button", name=re.compile("Promote"))).to_have_count(0)
    await expect(viewer.locator("#view")).not_to_contain_text("null")
    await shot(viewer, "12-viewer-detail")
