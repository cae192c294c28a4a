"""End to end: an A/B test between two models on a real local Ray, over real HTTP, with a real
SQLite state store. Two ingress replicas, so assignment must be the same whichever answers."""

from __future__ import annotations

import threading

import httpx
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from rayrec.cli import cli  # noqa: E402
from rayrec.errors import RayrecError  # noqa: E402
from rayrec.serving.config import AppArgs  # noqa: E402
from rayrec.serving.experiments.assignment import assign_arm  # noqa: E402
from rayrec.testing import serve_locally, write_toy_model  # noqa: E402

KEY = "experiment-key-3f1a"
AUTH = {"Authorization": f"Bearer {KEY}"}


#: The default (ingress on one node: the arm's pipeline runs in the ingress replica) and split
#: (the arm's generation travels from the preprocessor to the encoder and the scorer).
TOPOLOGIES = {
    "default": {"stages": {"ingress": {"num_replicas": 2, "num_cpus": 0.25}}},
    "split": {"topology": "split", "stages": {"ingress": {"num_replicas": 2, "num_cpus": 0.25}}},
}


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def server(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("experiments")
    models = root / "models"
    model_a = write_toy_model(models / "a", num_items=200, dim=16, seed=1, version="toy-a")
    model_b = write_toy_model(models / "b", num_items=200, dim=16, seed=2, version="toy-b")
    keys = root / "keys.txt"
    keys.write_text(KEY + "\n")
    args = AppArgs(model_dir=str(model_a), state=f"sqlite:///{root / 'state.db'}",
                   security={"api_keys_file": str(keys)}, **TOPOLOGIES[request.param])
    with serve_locally(args) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield {"client": client, "a": str(model_a), "b": str(model_b), "root": root}


def experiment(server, name="ab", shares=(0.5, 0.5), names=("A", "B"), dirs=None):
    dirs = dirs or (server["a"], server["b"])
    return {"name": name, "salt": "s1",
            "arms": [{"name": n, "model_dir": d, "share": s} for n, d, s in zip(names, dirs, shares)]}


def recommend(client, **body):
    response = client.post("/recommend", json={"k": 5, **body})
    assert response.status_code == 200, response.text
    return response.json()


def refused(client, body, status, field):
    response = client.post("/admin/experiments", json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert response.json()["message"].startswith(field + ":"), response.text


def bad_configs(server):
    client = server["client"]
    refused(client, experiment(server, shares=(0.6, 0.5)), 422, "arms.share")
    refused(client, experiment(server, names=("A", "A")), 422, "arms[1].name")
    refused(client, experiment(server, dirs=(server["a"], server["b"] + "-missing")), 422, "arms[1].model_dir")
    assert client.post("/admin/experiments", json=experiment(server)).status_code == 401  # no API key


def test_an_ab_test_from_start_to_promotion(server):
    client = server["client"]
    plain = recommend(client, user_id="user1")
    assert "arm" not in plain and "impression_id" not in plain  # no experiment yet
    bad_configs(server)

    started = client.post("/admin/experiments", json=experiment(server), headers=AUTH)
    assert started.status_code == 201, started.text
    threading.Event().wait(1.5)  # the other ingress replica re-reads the experiment within a second
    arms = {arm["name"]: arm for arm in started.json()["arms"]}
    assert arms["A"]["shares_live_model"] and not arms["B"]["shares_live_model"]  # A reuses the live model
    assert arms["B"]["model_files_mb"] > 0
    # What loading B cost, measured in every replica that holds a model (2 ingress replicas, or
    # the split graph's preprocessor, encoder and scorer); A is the live model: no extra cost.
    assert arms["B"]["replicas"] >= 2 and arms["B"]["added_resident_mb"] >= 0
    assert arms["A"]["replicas"] == 0 and arms["A"]["added_resident_mb"] == 0

    # While it runs, bad configs are still refused (and a second experiment conflicts) ...
    bad_configs(server)
    refused(client, experiment(server, name="other"), 409, "name")

    # ... and the running one keeps serving: every user always in the arm the hash gives.
    versions = {"A": "toy-a", "B": "toy-b"}
    seen = {}
    for i in range(60):
        user = f"user{i}"
        for _ in range(2):
            answer = recommend(client, user_id=user)
            assert answer["arm"] == assign_arm(user, "s1", [("A", 0.5), ("B", 0.5)])
            assert answer["model_version"] == versions[answer["arm"]]
            assert seen.setdefault(user, answer["arm"]) == answer["arm"]
    assert set(seen.values()) == {"A", "B"}
    session = recommend(client, session_id="anon-42", recent_items=["item3"])
    assert session["arm"] == assign_arm("anon-42", "s1", [("A", 0.5), ("B", 0.5)])
    forced = recommend(client, user_id="user1", arm="B")
    assert (forced["arm"], forced["model_version"]) == ("B", "toy-b")
    response = client.post("/recommend", json={"user_id": "user1", "arm": "Z"})
    assert response.status_code == 422 and response.json()["message"].startswith("arm:")

    # Clicks attributed to impressions of arm B only (on the first item shown).
    clicks = 0
    for i in range(60, 100):
        answer = recommend(client, user_id=f"user{i}")
        if answer["arm"] == "B":
            event = {"user_id": f"user{i}", "item_id": answer["items"][0]["item_id"], "event_type": "click",
                     "impression_id": answer["impression_id"]}
            result = client.post("/feedback", json={"events": [event]}, headers=AUTH)
            assert result.status_code == 200 and result.json()["attributed"] == 1, result.text
            clicks += 1
    unknown = client.post("/feedback", headers=AUTH, json={"events": [
        {"user_id": "u", "item_id": "item1", "impression_id": "not-an-impression"}]})
    assert unknown.status_code == 422 and unknown.json()["message"].startswith("events[0].impression_id:")
    report = client.get("/experiments/ab").json()
    rows = {row["arm"]: row for row in report["readout"]}
    assert rows["B"]["clicks"] == clicks > 0 and rows["A"]["clicks"] == 0
    assert rows["A"]["impressions"] + rows["B"]["impressions"] >= 2 * 60 + 40
    assert rows["B"]["reward"]["value"] == pytest.approx(clicks / rows["B"]["impressions"])  # position 0: 1 each
    assert rows["B"]["vs_control"]["ctr"]["diff"] > 0
    assert client.get("/experiments/nope").status_code == 404

    # Promote B under light load: not one request fails, and B then serves everybody.
    failures, answered, stop = [], [], threading.Event()

    def load():
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            i = 0
            while not stop.is_set():
                response = own.post("/recommend", json={"user_id": f"load{i % 50}", "k": 5})
                (answered if response.status_code == 200 else failures).append(response.status_code)
                i += 1

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        promoted = client.post("/admin/experiments/ab/promote", json={"arm": "B"}, headers=AUTH)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["status"] == "promoted"
        for _ in range(20):
            answered_before = len(answered)
            while len(answered) < answered_before + 5 and not failures:
                threading.Event().wait(0.05)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == [] and len(answered) > 20
    threading.Event().wait(1.5)  # the other ingress replica re-reads the experiment within a second
    for i in range(10):
        after = recommend(client, user_id=f"user{i}")
        assert after["model_version"] == "toy-b" and "arm" not in after
    assert client.post("/admin/experiments/ab/stop", headers=AUTH).status_code == 409  # it is over
    assert client.get("/experiments/ab").json()["promoted_arm"] == "B"
    chart = server["root"] / "ab.png"
    shown = CliRunner().invoke(cli, ["experiments", "report", "ab", "--url", str(client.base_url), "--chart",
                                     str(chart)], catch_exceptions=False)
    assert shown.exit_code == 0 and "promoted B" in shown.output and "A (control)" in shown.output, shown.output
    assert chart.stat().st_size > 1000


def test_stop_returns_everybody_to_the_live_model(server):
    client = server["client"]
    body = experiment(server, name="stop-me", dirs=(server["b"], server["a"]))  # B is live now (promoted)
    assert client.post("/admin/experiments", json=body, headers=AUTH).status_code == 201
    threading.Event().wait(1.5)  # the other ingress replica re-reads the experiment within a second
    assert recommend(client, user_id="user1", arm="B")["model_version"] == "toy-a"
    without_key = CliRunner().invoke(cli, ["experiments", "stop", "stop-me", "--url", str(client.base_url)])
    assert isinstance(without_key.exception, RayrecError)  # rayrec's main prints it as one line
    assert str(without_key.exception).startswith("POST /admin/experiments/stop-me/stop: 401")
    stopped = CliRunner().invoke(cli, ["experiments", "stop", "stop-me", "--url", str(client.base_url),
                                       "--api-key", KEY], catch_exceptions=False)
    assert stopped.exit_code == 0 and "(stopped)" in stopped.output, stopped.output
    threading.Event().wait(1.5)
    answer = recommend(client, user_id="user1")
    assert answer["model_version"] == "toy-b" and "arm" not in answer


def test_two_arms_on_one_model_differ_by_their_re_rankers(server):
    """An arm may bring its own scorers: the same model, with and without a re-ranker."""
    client = server["client"]
    body = {"name": "rerank", "arms": [
        {"name": "plain", "model_dir": server["b"], "share": 0.5},
        {"name": "diverse", "model_dir": server["b"], "share": 0.5,
         "scorers": [{"name": "category_diversity", "options": {"penalty": 0.5}}]}]}
    bad = {**body, "name": "rerank-bad", "arms": [
        body["arms"][0], {**body["arms"][1], "scorers": [{"name": "category_diversity", "options": {"penalti": 1}}]}]}
    refused(client, bad, 422, "arms[1].scorers[0]")
    started = client.post("/admin/experiments", json=body, headers=AUTH)
    assert started.status_code == 201, started.text
    assert len({arm["generation"] for arm in started.json()["arms"]}) == 1  # one model loaded for both arms
    threading.Event().wait(1.5)
    plain = recommend(client, user_id="user1", arm="plain")
    diverse = recommend(client, user_id="user1", arm="diverse")
    assert plain["arm"] == "plain" and diverse["arm"] == "diverse"
    assert all("rank_score" not in item for item in plain["items"])  # the server has no scorers
    assert all("rank_score" in item for item in diverse["items"])  # the arm's re-ranker ran
    # Options for the arm's own scorer are accepted for that arm, and refused where it does not run.
    assert recommend(client, user_id="user1", arm="diverse",
                     scorer_options={"category_diversity": {"penalty": 0.0}})["arm"] == "diverse"
    wrong = client.post("/recommend", json={"k": 5, "user_id": "user1", "arm": "plain",
                                            "scorer_options": {"category_diversity": {"penalty": 0.0}}})
    assert wrong.status_code == 422 and wrong.json()["message"].startswith("scorer_options.category_diversity")
    assert client.post("/admin/experiments/rerank/stop", headers=AUTH).status_code == 200
