"""Fuzz the HTTP API with schemathesis against its own ``/openapi.json``.

    python benchmarks/fuzz.py                       # starts a local server, 200 examples per operation and mode
    python benchmarks/fuzz.py --examples 1000       # longer
    python benchmarks/fuzz.py --url http://127.0.0.1:8000 --api-key KEY   # an already running server

For every operation, schemathesis generates valid requests (positive mode) and invalid ones
(negative mode: wrong types, missing fields, out-of-range values) and checks each answer:
no 5xx, status code, content type, headers and body as documented. The API key is sent so
write routes get past the guard (schemathesis also checks that leaving it out is refused).
Prints one JSON object: requests sent, 5xx answers, non-conforming answers and the first few
failures. ``tests/integration/test_reliability.py`` runs the same function with a small budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rayrec.testing import free_port


def run_fuzz(base_url: str, headers: dict[str, str] | None = None, examples: int = 200, seed: int | None = None,
             modes: tuple[str, ...] = ("positive", "negative"), timeout_s: float = 60) -> dict[str, Any]:
    """Fuzz every operation of the API at ``base_url``; failures are collected, not raised."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    from schemathesis.config import SchemathesisConfig
    from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

    config = SchemathesisConfig.from_dict({"checks": {
        # Schema-valid requests may still be refused by configuration the schema cannot show
        # (event types, filterable attributes, max_k, batch limits): a 4xx there is correct.
        "positive_data_acceptance": {"enabled": False},
        # An invalid request may also be too large: 413 is a rejection too.
        "negative_data_rejection": {"expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]},
    }})
    schema = schemathesis.openapi.from_url(base_url.rstrip("/") + "/openapi.json", config=config)
    report: dict[str, Any] = {"operations": 0, "requests": 0, "server_errors": 0, "failures": 0,
                              "by_operation": {}, "examples": []}
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        report["operations"] += 1
        has_inputs = bool(list(operation.iter_parameters())) or bool(operation.body)
        for mode in modes:
            if mode == "negative" and not has_inputs:
                continue  # nothing to make invalid (e.g. GET /healthz)
            counts = {"requests": 0, "failures": 0, "statuses": {}}
            strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

            @settings(max_examples=examples, deadline=None, database=None, derandomize=seed is not None,
                      phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are kept, not minimized
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def exercise(case) -> None:
                counts["requests"] += 1
                try:
                    response = case.call_and_validate(base_url=base_url, headers=headers, timeout=timeout_s)
                    status = response.status_code
                except (Exception, BaseExceptionGroup) as exc:  # failed checks, transport errors: record, go on
                    status = getattr(getattr(exc, "response", None), "status_code", None)
                    counts["failures"] += 1
                    if len(report["examples"]) < 10:
                        text = str(exc).strip()
                        report["examples"].append(f"{operation.label} [{mode}]: {text[:1500]}")
                    if status is None and "Server error" in str(exc):
                        status = 500
                if status is not None:
                    counts["statuses"][str(status)] = counts["statuses"].get(str(status), 0) + 1
                    if status >= 500:
                        report["server_errors"] += 1

            try:
                exercise()
            except Unsatisfiable:  # e.g. no invalid request exists for an operation without inputs
                counts["unsatisfiable"] = True
            report["requests"] += counts["requests"]
            report["failures"] += counts["failures"]
            report["by_operation"][f"{operation.label} [{mode}]"] = counts
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def start_local_server(workdir: Path, api_key: str) -> str:
    """A toy-model server with an API key on a local Ray (2 logical CPUs); returns its URL."""
    import ray
    from ray import serve

    from rayrec.serving.app import build_app
    from rayrec.serving.config import AppArgs
    from rayrec.testing import write_toy_model

    model = write_toy_model(workdir / "models" / "toy", num_items=2000, dim=32)
    keys = workdir / "keys.txt"
    keys.write_text(api_key + "\n")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    args = AppArgs(model_dir=str(model), state=f"sqlite:///{workdir / 'state.db'}",
                   security={"api_keys_file": str(keys)}, limits={"max_feedback_batch": 100})
    serve.run(build_app(args), name="rayrec", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="Fuzz this running server instead of starting one.")
    parser.add_argument("--api-key", default=os.environ.get("RAYREC_FUZZ_KEY", "fuzz-key"), help="Bearer key to send.")
    parser.add_argument("--examples", type=int, default=200, help="Examples per operation and mode.")
    parser.add_argument("--seed", type=int, default=None, help="Derandomize (same requests every run).")
    parser.add_argument("--positive-only", action="store_true")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rayrec-fuzz-"))
    started_here = options.url is None
    try:
        url = options.url or start_local_server(workdir, options.api_key)
        report = run_fuzz(url, {"Authorization": f"Bearer {options.api_key}"}, options.examples, options.seed,
                          ("positive",) if options.positive_only else ("positive", "negative"))
    finally:
        if started_here:
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if report["server_errors"] == 0 and report["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
