"""The demo page at ``/``, driven in a real headless Chromium against the real Serve graph.

The model is trained in-process on synthetic data (titles included), served by ``build_app``
on a local Ray, and the page is loaded by Playwright in Debian's ``chromium``
(``apt-get install chromium``; ``.ci/run`` installs it). Playwright's own browser download is
never used: the test passes ``executable_path``. Without a Chromium the browser tests skip
and say why. A screenshot of the page after the clicks is written to ``artifacts/``
(git-ignored) or ``$RAYREC_TEST_ARTIFACTS``, and its path is printed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from rayrec.data.synthetic import SyntheticConfig, generate  # noqa: E402
from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.testing import serve_locally  # noqa: E402
from rayrec.training.config import TrainConfig  # noqa: E402
from rayrec.training.local import train_in_process  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = SyntheticConfig(num_users=200, num_items=120, num_clusters=4, mean_events_per_user=15, seed=1)
TRAIN = TrainConfig(epochs=6, eval_every=3, learning_rate=5e-3, model={"dim": 16, "max_len": 20,
                    # categories let a 10-epoch model learn the synthetic topics; this tests serving, not quality
                    "item_encoder_options": {"use_categories": True}})
#: Chromium flags for a machine with no network and no display (and root, hence no sandbox).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    candidates = [os.environ.get("RAYREC_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for candidate in filter(None, candidates):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def artifacts_dir() -> Path:
    path = Path(os.environ.get("RAYREC_TEST_ARTIFACTS") or REPO / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    model_dir = train_in_process(generate(DATA), root / "model", TRAIN, log=lambda line: None)
    records = {}
    for line in (Path(model_dir) / "items.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["item_id"]] = record
    version = json.loads((Path(model_dir) / "config.json").read_text())["model_version"]
    args = AppArgs(model_dir=str(model_dir), state=f"sqlite:///{root / 'state.db'}")
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield {"url": url, "client": client, "records": records, "model_version": version}


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set RAYREC_CHROMIUM); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extras)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.errors = errors
    yield page
    context.close()


def listed_items(page) -> list[str]:
    return page.locator("#recs li").evaluate_all("nodes => nodes.map(n => n.dataset.itemId)")


def wait_for_render(page, after: int) -> None:
    """Wait until the recommendation list has been drawn more than ``after`` times (or the
    page reports an error, which then fails the test with the page's message)."""
    page.wait_for_function(
        f"Number(document.querySelector('#recs').dataset.render) > {after}"
        " || document.querySelector('#message').className === 'error'"
    )
    message = page.locator("#message")
    assert message.get_attribute("class") != "error", message.text_content()


def render_count(page) -> int:
    return int(page.locator("#recs").get_attribute("data-render"))


# -- without a browser ----------------------------------------------------------------------
def test_the_page_is_served_at_root_and_demo_and_kept_out_of_the_api_schema(server):
    client = server["client"]
    for path in ["/", "/demo"]:
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "<title>rayrec demo</title>" in response.text
    schema = client.get("/openapi.json").json()
    assert "/" not in schema["paths"] and "/demo" not in schema["paths"]
    assert "get" in schema["paths"]["/items/{item_id}"] and "put" in schema["paths"]["/items/{item_id}"]


def test_get_item_returns_the_catalogue_metadata(server):
    client, records = server["client"], server["records"]
    item_id, record = next(iter(records.items()))
    response = client.get(f"/items/{item_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["item_id"] == item_id and body["title"] == record["title"] and body["title"]
    assert body["categories"] == list(record.get("categories") or [])
    missing = client.get("/items/no-such-item")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["message"]
    # A catalogue change is visible at once, and a deleted item is gone.
    put = client.put("/items/demo-new", json={"title": "<b>Brand new</b>", "categories": [record["categories"][0]]})
    assert put.status_code == 200, put.text
    assert client.get("/items/demo-new").json()["title"] == "<b>Brand new</b>"
    assert client.delete("/items/demo-new").status_code == 200
    assert client.get("/items/demo-new").status_code == 404


# -- in Chromium --------------------------------------------------------------------------
def test_liking_an_item_changes_the_list_in_the_browser(server, page):
    records, user = server["records"], "u001"
    page.goto(f"{server['url']}/?user={user}")
    page.wait_for_selector("#recs li")
    before = listed_items(page)
    assert len(before) == 10
    assert page.locator("#model-version").text_content() == server["model_version"]
    assert page.locator("#latency").text_content().endswith(" ms")
    first = page.locator("#recs li").first
    assert first.locator(".title").text_content() == records[before[0]]["title"]  # titles, not ids
    assert "because of" in first.locator(".why").text_content()  # explanations, by title
    assert page.locator("#search-section").is_hidden()  # search is off on this server (no text model)

    liked = before[-1]
    renders = render_count(page)
    page.locator(f'#recs li[data-item-id="{liked}"] button[data-action="like"]').click()
    wait_for_render(page, renders)
    after = listed_items(page)
    assert after != before and liked not in after  # a liked item is seen, so it leaves the list
    assert len(after) == 10
    assert records[liked]["title"] in page.locator("#events").text_content()
    calls = page.locator("#calls li").evaluate_all("ns => ns.map(n => [...n.children].map(c => c.textContent).join(' '))")
    assert any(line.startswith("POST /feedback 200 · ") for line in calls), calls
    assert sum(line.startswith("POST /recommend 200 · ") for line in calls) == 2, calls
    assert "changed" in page.locator("#message").text_content()

    shot = artifacts_dir() / "demo-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert page.errors == []


def test_a_new_visitor_goes_from_popular_to_personal_after_one_like(server, page):
    page.goto(server["url"] + "/")
    page.wait_for_function("document.body.dataset.ready === 'true'")
    renders = render_count(page)
    page.locator("#new-user").click()
    wait_for_render(page, renders)
    assert page.locator("#recs .badge", has_text="popular").count() == 10
    renders = render_count(page)
    page.locator("#recs li").first.locator('button[data-action="like"]').click()
    wait_for_render(page, renders)
    assert page.locator("#recs .badge", has_text="popular").count() == 0
    assert "because of" in page.locator("#recs li .why").first.text_content()
    # A dislike removes the item for good.
    disliked = listed_items(page)[0]
    renders = render_count(page)
    page.locator(f'#recs li[data-item-id="{disliked}"] button[data-action="dislike"]').click()
    wait_for_render(page, renders)
    assert disliked not in listed_items(page)
    assert page.errors == []


def test_the_search_box_appears_when_the_server_has_search(server, page):
    """Search is off on this server (no text model): the test turns it on in the page's view of
    /healthz and answers POST /search itself (the real route is tested with the text plugin)."""
    records = server["records"]
    health = {**server["client"].get("/healthz").json(), "search": True}
    found = list(records)[:3]
    sent = []

    def search(route):
        sent.append(route.request.post_data_json)
        items = [{"item_id": item, "score": 1.0 - i / 10, "explanation": {"because": [], "source": "search"}}
                 for i, item in enumerate(found)]
        route.fulfill(json={"items": items, "model_version": server["model_version"]})

    page.route("**/healthz", lambda route: route.fulfill(json=health))
    page.route("**/search", search)
    page.goto(f"{server['url']}/?user=u002")
    page.wait_for_selector("#recs li")
    assert page.locator("#search-section").is_visible()
    page.fill("#query", "herbs for the garden")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    assert sent == [{"query": "herbs for the garden", "k": 10, "user_id": "u002", "include": ["title", "categories"]}]
    titles = page.locator("#search-results .title").all_text_contents()
    assert titles == [records[item]["title"] for item in found]
    assert page.errors == []


def test_the_key_box_appears_after_a_401_and_the_key_is_sent_as_a_bearer_token(server, page):
    """The server here has no keys; the test answers the first feedback with a 401."""
    authorizations = []

    def feedback(route):
        authorization = route.request.headers.get("authorization")
        authorizations.append(authorization)
        if authorization != "Bearer s3cret":
            route.fulfill(status=401, json={"message": "authorization: an API key is required", "detail": []})
        else:
            route.continue_()

    page.route("**/feedback", feedback)
    page.goto(f"{server['url']}/?user=u003")
    page.wait_for_selector("#recs li")
    assert page.locator("#api-key-box").is_hidden()
    page.locator("#recs li").first.locator('button[data-action="view"]').click()
    page.wait_for_selector("#message.error")
    assert "401" in page.locator("#message").text_content()
    assert page.locator("#api-key-box").is_visible()
    page.fill("#api-key", "s3cret")
    page.press("#api-key", "Enter")
    renders = render_count(page)
    page.locator("#recs li").first.locator('button[data-action="view"]').click()
    wait_for_render(page, renders)
    assert authorizations == [None, "Bearer s3cret"]
    page.errors[:] = [e for e in page.errors if "401" not in e]  # the refused call, logged by Chromium
    assert page.errors == []
