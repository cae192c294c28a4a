"""Serving benchmark: `rayrec serve --model DIR`, as a user starts it, on trained models.

    python benchmarks/serving.py                        # ml-100k, synthetic 100k and 1M items
    python benchmarks/serving.py --models synthetic-100k
    python benchmarks/serving.py --model DIR            # a model directory of your own
    python benchmarks/serving.py --compare              # topologies and proxies side by side
    python benchmarks/serving.py --flags "--topology split --proxy serve"   # one variant

Every row serves a model trained by ``rayrec train`` (the standard models are trained once and
cached under ``--cache``): ml-100k with the defaults on the leave-one-out training file of
``../shared/datasets``, and synthetic catalogues of 100k and 1M items with the default SASRec
user tower (``--no-search``, a few epochs: serving cost does not depend on how well a model
learned). ``--toy-items N`` adds a row for the numpy ``ToyModel`` of the tests, labelled so.

Per row, on a local Ray that ``rayrec serve`` starts itself (``--num-cpus``, 2 by default, like
the target machine; the load generator runs on the same cores):

* the in-process compute of the request the server runs (preprocess + user tower + top-K +
  explanations, the same logic objects as a replica, no Ray, no HTTP);
* start-up: from launching ``rayrec serve`` to the first answer;
* end-to-end p50/p99 and throughput at each concurrency, over HTTP to the port ``rayrec serve``
  prints, for training users, and which share of the answers came from the user's history
  (``explanation.source == "history"``: the user tower ran);
* read-your-writes: after a ``dislike`` of the top item, is it gone from the very next answer?

Not a test: results depend on the machine and its load, so variants run one after another in
one invocation and are printed side by side.
"""

from __future__ import annotations

import os

# Before numpy loads its BLAS: one thread, as in every replica.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import asyncio
import json
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import DATASETS, rayrec_command, training_users  # noqa: E402

from rayrec.testing import free_port  # noqa: E402

#: name -> how to make its training data; the model is `rayrec train` on it.
STANDARD_MODELS = {
    "ml-100k": {"dataset": "ml-100k"},
    "synthetic-100k": {"synthetic": ["--users", "40000", "--items", "100000", "--clusters", "100",
                                     "--events-per-user", "25"], "train": ["--no-search", "--epochs", "2"]},
    # Long histories: 8M events, of which 938,334 items (of the 1M) have interactions and so
    # make the model's catalogue (16,000 users gave 743,501); Parquet shards, read by Ray Data.
    "synthetic-1m": {"synthetic": ["--users", "40000", "--items", "1000000", "--clusters", "200",
                                   "--events-per-user", "200", "--format", "parquet", "--shards", "8"],
                     "train": ["--no-search", "--epochs", "1"]},
}

#: --compare: (label, extra `rayrec serve` flags), the first is the default command.
VARIANTS = [
    ("rayrec serve (defaults: topology auto -> ingress, proxy haproxy)", []),
    ("--topology split (a deployment per stage)", ["--topology", "split"]),
    ("--topology fused", ["--topology", "fused"]),
    ("--proxy serve (Ray Serve's Python proxy)", ["--proxy", "serve"]),
    ("--topology split --proxy serve (the default before)", ["--topology", "split", "--proxy", "serve"]),
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- the models -----------------------------------------------------------------------------
def ensure_model(name: str, cache: Path) -> Path:
    """The cached model directory of a standard model, trained with `rayrec train` if missing."""
    model_dir = cache / name / "model"
    if (model_dir / "config.json").exists():
        return model_dir
    spec = STANDARD_MODELS[name]
    data_dir = cache / name / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if "dataset" in spec:
        from _leave_one_out import load_leave_one_out

        path = DATASETS / spec["dataset"]
        if not path.exists():
            raise SystemExit(f"{name}: {path} not found (set RAYREC_DATASETS or pass --models without it)")
        interactions, items = load_leave_one_out(spec["dataset"], path).write_rayrec_inputs(data_dir)
    else:
        run([*rayrec_command(), "synthetic", "--out", str(data_dir), *spec["synthetic"]], f"{name}: data")
        parquet = "parquet" in spec["synthetic"]
        interactions = data_dir / ("interactions" if parquet else "interactions.csv")
        items = data_dir / ("items.parquet" if parquet else "items.csv")
    command = [*rayrec_command(), "train", "--interactions", str(interactions), "--out", str(model_dir),
               *(["--items", str(items)] if items else []), *spec.get("train", [])]
    run(command, f"{name}: training (once; cached in {model_dir})")
    return model_dir


def run(command: list[str], what: str) -> None:
    print(f"{what}: {shlex.join(command)}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=sys.stderr)


def describe(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_kind") == "toy":  # the tests' ToyModel
        from rayrec.models.servable import load_model_dir

        return {"tower": "ToyModel: numpy mean, no trained tower", "items": len(load_model_dir(model_dir).item_ids)}
    model = config.get("train_config", {}).get("model", {})
    kind = config.get("model_kind", "two_tower")
    tower = model.get("user_encoder", "?") if kind == "two_tower" else kind
    return {"tower": tower, "item_tower": model.get("item_encoder"), "items": config["num_items"],
            "dim": config["dim"], "max_len": model.get("max_len")}


# -- in-process compute ---------------------------------------------------------------------
def in_process(model_dir: Path, users: list[str], requests: int = 300) -> dict:
    """The request as an ingress replica runs it (topology ingress), without Ray or HTTP."""
    from rayrec.serving.config import AppArgs
    from rayrec.serving.graph.deployments import components
    from rayrec.models.servable import load_model_dir
    from rayrec.serving.graph.model_loading import item_records
    from rayrec.serving.schemas import RecommendRequest
    from rayrec.serving.stages.encode import HistoryEncoderLogic
    from rayrec.serving.stages.pipeline import PipelineLogic
    from rayrec.serving.stages.preprocess import PreprocessorLogic
    from rayrec.serving.stages.scoring import RetrievalLogic
    from rayrec.state import open_state_store

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        args = AppArgs(model_dir=str(model_dir), state=f"sqlite:///{tmp}/state.db")
        store = open_state_store(args.state)
        store.ensure_model(str(model_dir))
        model = load_model_dir(model_dir)
        scorer = RetrievalLogic(model, store, item_records(model, model_dir),
                             candidate_sources=components("candidate_source", args.candidate_sources),
                             exact_search_max_items=args.retrieval.exact_search_max_items,
                             ann_options=args.retrieval.ann.model_dump())
        pipeline = PipelineLogic(PreprocessorLogic(model, store, args.event_weights), HistoryEncoderLogic(model), scorer)
        pipeline.warm_up()
        times, history = [], 0
        for i in range(requests):
            started = time.perf_counter()
            answer = scorer.recommend(*pipeline.prepare_and_encode(RecommendRequest(user_id=users[i % len(users)], k=10)))
            times.append(time.perf_counter() - started)
            history += answer["items"][0]["explanation"]["source"] == "history"
        recall = ann_recall(pipeline, users[:100]) if scorer.index.ann is not None else None
        store.close()
    return {"p50_ms": 1000 * percentile(times, 50), "p99_ms": 1000 * percentile(times, 99),
            "history_share": history / requests, "ann": scorer.index.ann is not None, "recall_at_10": recall}


def ann_recall(pipeline, users: list[str]) -> float:
    """Recall@10 of the ANN index against exact search, for these users' own vectors."""
    from rayrec.serving.schemas import RecommendRequest

    vectors = [pipeline.prepare_and_encode(RecommendRequest(user_id=user, k=10))[1] for user in users]
    return pipeline.scorer.index.recall_at_k(k=10, queries=np.stack(vectors))


# -- the server -----------------------------------------------------------------------------
class Server:
    """`rayrec serve --model DIR` in a subprocess (its own Ray), stopped with Ctrl-C."""

    def __init__(self, model_dir: Path, workdir: Path, num_cpus: int, flags: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        self.command = [*rayrec_command(), "serve", "--model", str(model_dir), "--port", str(self.port),
                        "--state", str(workdir / "state.db"), "--num-cpus", str(num_cpus), *flags]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()

    def wait_first_answer(self, user: str, timeout: float = 600) -> float:
        """Seconds from launch to the first 200 from /recommend."""
        import httpx

        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("rayrec serve exited:\n" + "".join(self.lines)[-3000:])
            try:
                if httpx.post(self.url + "/recommend", json={"user_id": user, "k": 10}, timeout=10).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("rayrec serve did not answer in time:\n" + "".join(self.lines)[-3000:])

    def serving_line(self) -> str:
        return next((line.strip() for line in self.lines if "rayrec is serving" in line), "")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def load(url: str, users: list[str], concurrency: int, duration: float, warmup: float = 2.0) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = history = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        measuring_from = time.perf_counter() + warmup
        stop_at = measuring_from + duration

        async def worker(seed: int) -> None:
            nonlocal errors, history
            rng = random.Random(seed)
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.post(url + "/recommend", json={"user_id": rng.choice(users), "k": 10}) as response:
                    body = await response.read()
                    ok = response.status == 200
                elapsed = time.perf_counter() - started
                if started >= measuring_from:
                    if ok:
                        latencies.append(elapsed)
                        history += json.loads(body)["items"][0]["explanation"]["source"] == "history"
                    else:
                        errors += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "throughput_rps": len(latencies) / duration, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99), "history_share": history / max(1, len(latencies))}


def read_your_writes(url: str, users: list[str], trials: int) -> dict:
    """A dislike of the top item, then the next answer for the same user must not contain it."""
    import httpx

    stale = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for trial in range(trials):
            user = users[trial % len(users)]
            top = client.post("/recommend", json={"user_id": user, "k": 5}).json()["items"][0]["item_id"]
            event = {"user_id": user, "item_id": top, "event_type": "dislike", "event_id": f"bench-{trial}"}
            client.post("/feedback", json={"events": [event]}).raise_for_status()
            after = [item["item_id"] for item in client.post("/recommend", json={"user_id": user, "k": 5}).json()["items"]]
            stale += top in after
    return {"trials": trials, "stale_reads": stale}


def measure(name: str, model_dir: Path, options, flags: list[str]) -> dict:
    users = training_users(model_dir)
    row = {"model": name, **describe(model_dir), "flags": flags}
    print(f"{name}: in-process compute ...", file=sys.stderr, flush=True)
    row["in_process"] = in_process(model_dir, users)
    with tempfile.TemporaryDirectory(prefix="rayrec-bench-") as tmp:
        server = Server(model_dir, Path(tmp), options.num_cpus, flags)
        try:
            row["startup_s"] = server.wait_first_answer(users[0])
            row["serving"] = server.serving_line()
            row["load"] = []
            for concurrency in [int(c) for c in options.concurrency.split(",")]:
                print(f"{name} {shlex.join(flags) or '(defaults)'}: concurrency {concurrency} ...", file=sys.stderr, flush=True)
                row["load"].append(asyncio.run(load(server.url, users, concurrency, options.duration)))
            if options.freshness_trials:
                # Users of their own, so the dislikes do not change the other rows' answers.
                row["read_your_writes"] = read_your_writes(server.url, users[-100:], options.freshness_trials)
        finally:
            server.stop()
    row["e2e_over_in_process"] = row["load"][0]["p50_ms"] / row["in_process"]["p50_ms"]
    row["loadavg_1m"] = os.getloadavg()[0]
    return row


def print_rows(rows: list[dict]) -> None:
    levels = [r["concurrency"] for r in rows[0]["load"]]
    cells = " | ".join(f"c={c}: p50 / p99 ms, req/s" for c in levels)
    print(f"\n| model | user tower | items | command | in-process p50 ms | start-up s | {cells} | "
          "e2e p50 / in-process | history share | stale reads |")
    print("|---|---|---:|---|---:|---:|" + "---:|" * len(levels) + "---:|---:|---:|")
    for r in rows:
        load_cells = " | ".join(f"{x['p50_ms']:.1f} / {x['p99_ms']:.1f}, {x['throughput_rps']:.0f}"
                                + (f" ({x['errors']} errors)" if x["errors"] else "") for x in r["load"])
        fresh = r.get("read_your_writes")
        stale = f"{fresh['stale_reads']} / {fresh['trials']}" if fresh else "-"
        history = min(x["history_share"] for x in r["load"])
        command = "rayrec serve " + (shlex.join(r["flags"]) or "(defaults)")
        print(f"| {r['model']} | {r['tower']} | {r['items']:,} | {command} | {r['in_process']['p50_ms']:.2f} | "
              f"{r['startup_s']:.1f} | {load_cells} | {r['e2e_over_in_process']:.1f}x | {history:.2f} | {stale} |")
    for r in rows:
        if r["in_process"].get("recall_at_10") is not None:
            print(f"{r['model']}: HNSW index from the model directory, recall@10 against exact search "
                  f"{r['in_process']['recall_at_10']:.3f} (100 users' own vectors)")
    for r in rows:
        if r.get("serving"):
            print(f"{r['model']} {shlex.join(r['flags'])}: {r['serving']}")


def _name(model_dir: Path) -> str:
    """A row label for a model directory: its name, or its parent's for .../NAME/model."""
    return model_dir.parent.name if model_dir.name == "model" else model_dir.name


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(STANDARD_MODELS), choices=list(STANDARD_MODELS))
    parser.add_argument("--model", action="append", default=[], help="serve this model directory (repeatable)")
    parser.add_argument("--toy-items", type=int, default=0, help="also a ToyModel row with this many items")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("RAYREC_BENCH_CACHE", HERE / ".cache")),
                        help="where the standard models are trained once and kept")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per concurrency level")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--freshness-trials", type=int, default=1000)
    parser.add_argument("--flags", default="", help="extra `rayrec serve` flags of every row")
    parser.add_argument("--compare", action="store_true", help="every VARIANTS row for each model")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    options = parser.parse_args(argv)

    models: list[tuple[str, Path]] = [(_name(Path(m)), Path(m)) for m in options.model]
    if not options.model:
        models += [(name, ensure_model(name, options.cache)) for name in options.models]
    if options.toy_items:
        from rayrec.testing import write_toy_model

        toy = options.cache / f"toy-{options.toy_items}"
        if not toy.exists():
            write_toy_model(toy, num_items=options.toy_items, dim=64, num_users=1000)
        models.append((f"ToyModel {options.toy_items:,} (not trained)", toy))
    variants = VARIANTS if options.compare else [("", shlex.split(options.flags))]
    rows = []
    for name, model_dir in models:
        for _, flags in variants:
            rows.append(measure(name, model_dir, options, flags))
            print_rows(rows[-1:])
    print("\nAll rows:")
    print_rows(rows)
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
