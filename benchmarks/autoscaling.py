"""Autoscaling under a load ramp: low, high, low. Do the replicas follow, within their config?

    python benchmarks/autoscaling.py --model DIR            # writes autoscaling.png here
    python benchmarks/autoscaling.py --model DIR --phases 1:20,16:60,1:60 --png out.png

Builds the graph `rayrec serve` builds (``build_app``, topology auto, HAProxy in front) on a local
Ray, with Ray Serve's autoscaling on the deployment that answers reads (the ingress replicas,
which run the read pipeline on one node) and on the feedback stage. A load generator on the same
machine sends ``/recommend`` for training users at each phase's concurrency. Every second it
records the requests answered, their p50 latency and each deployment's running replicas
(``serve.status()``); it prints a row per window and draws latency, throughput and replicas
over time. Not a test: timing depends on the machine.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import asyncio
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import training_users  # noqa: E402

#: Serve's autoscaling_config for the read path; short delays so a minutes-long run shows both ways.
AUTOSCALING = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
               "upscale_delay_s": 3, "downscale_delay_s": 15, "look_back_period_s": 3}


async def generate(url: str, users: list[str], phases: list[tuple[int, float]], samples: list) -> None:
    """Run the phases; append (finish time, latency s, ok) per request to ``samples``."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        for concurrency, seconds in phases:
            stop_at = time.perf_counter() + seconds

            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                while time.perf_counter() < stop_at:
                    started = time.perf_counter()
                    async with session.post(url + "/recommend", json={"user_id": rng.choice(users), "k": 10}) as answer:
                        await answer.read()
                        samples.append((time.perf_counter(), time.perf_counter() - started, answer.status == 200))

            await asyncio.gather(*(worker(seed) for seed in range(concurrency)))


def replica_counts() -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get("rayrec")
    if app is None:
        return {}
    return {name: sum(count for state, count in status.replica_states.items() if str(state).endswith("RUNNING"))
            for name, status in app.deployments.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model directory written by rayrec train")
    parser.add_argument("--phases", default="1:20,16:60,1:60", help="concurrency:seconds, comma-separated")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per printed row")
    parser.add_argument("--png", type=Path, default=Path("autoscaling.png"))
    options = parser.parse_args(argv)
    phases = [(int(c), float(s)) for c, s in (part.split(":") for part in options.phases.split(","))]

    import ray
    from ray import serve

    from rayrec.serving.app import build_app
    from rayrec.serving.config import AppArgs
    from rayrec.serving.graph.proxy import default_proxy, prepare_local_ray
    from rayrec.testing import free_port

    users = training_users(options.model)
    prepare_local_ray(default_proxy())
    ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=False)
    samples: list[tuple[float, float, bool]] = []
    timeline: list[tuple[float, dict[str, int]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
            scaled = {"autoscaling": AUTOSCALING, "num_cpus": 0.25}
            args = AppArgs(model_dir=str(Path(options.model).resolve()), state=f"sqlite:///{tmp}/state.db",
                           stages={"ingress": scaled, "feedback": {**scaled, "num_cpus": 0.125}})
            serve.run(build_app(args), name="rayrec", route_prefix="/")
            started = time.perf_counter()
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    timeline.append((time.perf_counter() - started, replica_counts()))
                    done.wait(1.0)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            asyncio.run(generate(f"http://127.0.0.1:{port}", users, phases, samples))
            time.sleep(options.window)
            done.set()
            watcher.join()
        finally:
            serve.shutdown()
            ray.shutdown()
    report(samples, timeline, started, phases, options)


def report(samples, timeline, started, phases, options) -> None:
    ends = np.cumsum([seconds for _, seconds in phases])
    names = sorted({name for _, counts in timeline for name in counts})
    print(f"\nautoscaling_config {AUTOSCALING}; phases (concurrency: seconds) {phases}")
    print("| t (s) | concurrency | req/s | p50 ms | failed | " + " | ".join(f"{n} replicas" for n in names) + " |")
    print("|---:|---:|---:|---:|---:|" + "---:|" * len(names))
    times = np.array([t - started for t, _, _ in samples])
    latencies = np.array([latency for _, latency, _ in samples])
    ok = np.array([good for _, _, good in samples])
    rows = []
    for low in np.arange(0, ends[-1], options.window):
        high = low + options.window
        inside = (times >= low) & (times < high)
        counts = [c for t, c in timeline if low <= t < high]
        last = counts[-1] if counts else {}
        phase = phases[min(int(np.searchsorted(ends, low, side="right")), len(phases) - 1)][0]
        p50 = 1000 * float(np.median(latencies[inside & ok])) if (inside & ok).any() else float("nan")
        rows.append((low, p50, int((inside & ok).sum()) / options.window))
        print(f"| {low:.0f} | {phase} | {rows[-1][2]:.0f} | {p50:.1f} | {int((inside & ~ok).sum())} | "
              + " | ".join(str(last.get(n, 0)) for n in names) + " |")
    print(f"requests {len(samples)}, failed {int((~ok).sum())}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (load_axis, replica_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    load_axis.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", label="req/s")
    latency_axis = load_axis.twinx()
    latency_axis.plot([r[0] for r in rows], [r[1] for r in rows], marker="s", color="tab:red", label="p50 ms")
    load_axis.set(ylabel="answered req/s", title="Load ramp: " + ", ".join(f"c={c} for {s:.0f}s" for c, s in phases))
    latency_axis.set(ylabel="p50 latency (ms)")
    for name in names:
        replica_axis.step([t for t, _ in timeline], [c.get(name, 0) for _, c in timeline], where="post", label=name)
    replica_axis.set(xlabel="seconds", ylabel="running replicas")
    replica_axis.legend()
    figure.tight_layout()
    figure.savefig(options.png, dpi=100)
    print(f"chart: {options.png}")


if __name__ == "__main__":
    main()
