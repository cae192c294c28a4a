"""Model selection: ``rayrec train`` tries a few candidate models and keeps the best.

A user should not need to know whether their data is sequential. Every candidate is scored
the same way, on the same internal validation split (each user's last item, the rest of
their history as input, :func:`rayrec.training.prepare.validation_split`), with the same
NDCG@10 (:mod:`rayrec.evaluation.metrics`):

- ``sasrec``: the sequential two-tower model (causal self-attention user tower);
- ``als``: an order-free factorisation (implicit ALS, user vectors folded in from the
  history), strong where the order of a user's events carries no signal;
- ``ease``: the order-free EASE item-item model (user vector: the history's items), strong
  on small catalogues without order signal; only up to ``EASE_MAX_ITEMS`` items (its
  weights are a dense N x N matrix);
- ``sasrec_text``: the sequential model with a content-aware item tower, when the items file
  has text and an installed plugin can encode it, so new items are recommendable from their
  text and ``POST /search`` works.

After the trials, the best sequential candidate is blended with the best order-free one
(``score_a + w * score_b``, ``w`` chosen on the validation shortlists the trials write,
:mod:`rayrec.training.shortlists`); the blend (:mod:`rayrec.models.blend`) is kept when it
beats the best single candidate on validation by ``MIN_RELATIVE_GAIN``.

The candidates are Ray Tune trials (a two-tower trial runs its own Ray Train ``TorchTrainer``
and streams its epochs to Tune through ``TuneReportCallback``), so on a cluster they run in
parallel; on a laptop they run one after another within ``search.budget_s``. The winner's
model directory becomes ``--out``; ``selection.json`` there records every candidate, its
validation score and why the winner won.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from rayrec.training.config import TrainConfig
from rayrec.training.prepare import PreparedData
from rayrec.training.shortlists import MIN_RELATIVE_GAIN, Shortlists, best_blend

SELECTION_DIR = ".selection"
SELECTION_FILE = "selection.json"
#: Share of the budget the order-free candidates may use together: they are fast, and the
#: sequential models need the rest.
ALS_BUDGET_SHARE = 0.15
#: Candidate kinds trained in the trial itself, without Ray Train, from the whole history.
ORDER_FREE_KINDS = ("als", "ease")


@dataclasses.dataclass
class Candidate:
    """One model to try: ``kind`` is ``two_tower`` (trained by Ray Train), ``als`` or ``ease``."""

    name: str
    kind: str
    description: str
    config: dict[str, Any]  # the TrainConfig of a two-tower candidate, as a dict


def text_extractor_name() -> str | None:
    """The first registered item feature extractor that encodes free text (the text plugin's)."""
    from rayrec.plugins import registry

    for component in registry():
        cls = component.cls
        if component.kind == "feature_extractor" and getattr(cls, "target", "item") == "item" \
                and getattr(cls, "supports_queries", False):
            return cls.name
    return None


def _has_text(data: PreparedData) -> bool:
    items = data.items
    return items is not None and any(title or text for title, text in zip(items.title, items.text))


def candidates_for(data: PreparedData, config: TrainConfig) -> list[Candidate]:
    """The candidates that apply to ``data``, cheapest first: those ``search.candidates``
    names, or by default all of them but ``sasrec`` where ``sasrec_text`` applies and the
    catalogue is small enough for the full softmax."""
    from rayrec.models.ease_model import EASE_MAX_ITEMS
    from rayrec.plugins import registry

    base = config.model_dump()
    base["search"]["enabled"] = False
    found = [Candidate("als", "als", "order-free: implicit ALS, user vector folded in from the history", {})]
    if data.num_items <= EASE_MAX_ITEMS:
        found.append(Candidate("ease", "ease", "order-free: EASE item-item model (catalogues up to 10,000 items)", {}))
    found.append(Candidate("sasrec", "two_tower", f"sequential: {config.model.user_encoder} over the recent items",
                           base))
    extractor = text_extractor_name()
    if extractor is not None and _has_text(data) and not config.item_features:
        text_config = json.loads(json.dumps(base))
        text_config["item_features"] = [{"name": extractor, "options": {}}]
        if "content_item_tower" in registry().names("encoder"):
            text_config["model"]["item_encoder"] = "content_item_tower"
            text_config["model"]["item_encoder_options"] = {}
        found.append(Candidate("sasrec_text", "two_tower",
                               f"sequential with item text ({extractor}): cold start from content and /search",
                               text_config))
    wanted = config.search.candidates
    if wanted is None:
        # With item text, the content-aware model is the sequential candidate while the catalogue
        # takes the full softmax: its item vectors still hold the id embedding, and two sequential
        # runs would halve the time of each. Beyond that the content-aware steps run at about
        # half the rate and the text encoding takes its share, so the id-only model runs too:
        # on 256k interactions and 22,613 items the budget-bound sasrec_text reached val NDCG@10
        # 0.445 where sasrec alone reached 0.575 (README, Quality).
        both = config.model.resolved_loss(data.num_items) == "sampled"
        return [c for c in found if both or not (c.name == "sasrec" and any(f.name == "sasrec_text" for f in found))]
    unknown = sorted(set(wanted) - {c.name for c in found})
    if unknown:
        from rayrec.errors import ConfigError

        raise ConfigError(f"search.candidates: {', '.join(unknown)} not applicable to this data; "
                          f"candidates here: {', '.join(c.name for c in found)}")
    return [c for c in found if c.name in wanted]


def _deadlines(candidates: list[Candidate], started: float, budget_s: float, parallel: bool) -> list[float]:
    """When each candidate must stop. In parallel, every candidate has the whole budget; one
    after another, the order-free candidates split a small share and the two-tower
    candidates split the rest."""
    if parallel:
        return [started + budget_s] * len(candidates)
    two_tower = sum(c.kind == "two_tower" for c in candidates)
    order_free = sum(c.kind in ORDER_FREE_KINDS for c in candidates)
    order_free_share = ALS_BUDGET_SHARE if two_tower else 1.0
    rest = (1.0 - order_free_share * (order_free > 0)) / max(1, two_tower)
    deadlines, spent = [], 0.0
    for candidate in candidates:
        spent += order_free_share / order_free if candidate.kind in ORDER_FREE_KINDS else rest
        deadlines.append(started + budget_s * min(1.0, spent))
    return deadlines


def _candidate_trial(config: dict[str, Any], data: PreparedData) -> None:
    """One Tune trial: train one candidate into its own directory and report its validation."""
    from ray import tune

    trial_config = config["trial"]
    candidate = Candidate(**trial_config["candidate"])
    out_dir = Path(trial_config["out_dir"])
    deadline = trial_config["deadline"]
    started = time.perf_counter()
    if candidate.kind in ORDER_FREE_KINDS:
        # Fitted in this trial's process: it holds every sequence (read from the Ray Dataset
        # where the input came through Ray Data), the driver none.
        data = data.in_memory()
    if candidate.kind == "als":
        from rayrec.training.als import train_als

        details = train_als(data, out_dir, seed=trial_config["seed"], deadline=deadline,
                            threads=trial_config["threads"])
    elif candidate.kind == "ease":
        from rayrec.training.ease import train_ease

        details = train_ease(data, out_dir, seed=trial_config["seed"], deadline=deadline,
                             threads=trial_config["threads"])
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        from rayrec.training.prepare import with_item_features
        from rayrec.training.trainer import train_distributed

        config = TrainConfig(**candidate.config)
        candidate_data = with_item_features(data, config)
        train_distributed(candidate_data, out_dir, config, deadline=deadline, callbacks=[TuneReportCallback()],
                          log=lambda line: print(f"[{candidate.name}] {line}", flush=True), shortlists=True,
                          storage=trial_config.get("storage"))
        details = None
    metrics = json.loads((out_dir / "metrics.json").read_text())
    if details is None:  # a two-tower run: what its metrics say about the epochs
        details = {"best_epoch": metrics.get("best_epoch"), "epochs_trained": metrics.get("epochs_trained"),
                   "batch_size": metrics.get("batch_size"), "input": metrics.get("input", "memory")}
    tune.report({"candidate": candidate.name, "val_ndcg@10": metrics["best_val_ndcg@10"],
                 "val_hr@10": metrics.get("best_val_hr@10"), "seconds": time.perf_counter() - started,
                 "details": json.dumps(details), "final": True})


def select_and_train(data: PreparedData, out_dir: str | Path, config: TrainConfig,
                     log: Callable[[str], None] = print, storage: str | None = None) -> Path:
    """Train every candidate as a Ray Tune trial, keep the best by validation NDCG@10 in
    ``out_dir``, and record the comparison in ``out_dir/selection.json`` (``storage``: where
    the two-tower candidates' Ray Train runs keep their checkpoints, as in
    :func:`rayrec.training.trainer.train_distributed`)."""
    import ray
    from ray import tune

    from rayrec.training.trainer import ensure_ray, ray_log_level, worker_layout

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates = candidates_for(data, config)
    ensure_ray(1)
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    # In parallel only when every candidate gets at least one full worker's worth (8 CPUs);
    # otherwise one after another, each trial with the whole cluster.
    parallel = cluster_cpus / len(candidates) >= 8
    cpus_per_trial = cluster_cpus / len(candidates) if parallel else cluster_cpus
    concurrent = len(candidates) if parallel else 1
    workers, cpus_per_worker = worker_layout(config, cpus_per_trial)
    for candidate in candidates:
        if candidate.kind == "two_tower":
            candidate.config.update(num_workers=workers, cpus_per_worker=cpus_per_worker)
    started = time.time()
    deadlines = _deadlines(candidates, started, config.search.budget_s, parallel)
    log(f"model selection: {len(candidates)} candidates ({', '.join(c.name for c in candidates)}), "
        f"budget {config.search.budget_s / 60:.0f} min, {concurrent} at a time")
    work_dir = out_dir / SELECTION_DIR
    shutil.rmtree(work_dir, ignore_errors=True)
    trial_configs = [{
        "candidate": dataclasses.asdict(candidate),
        "out_dir": str(work_dir / candidate.name),
        "deadline": deadline,
        "seed": config.seed,
        "threads": max(1, int(cpus_per_trial)),
        "storage": storage,
    } for candidate, deadline in zip(candidates, deadlines)]
    # An order-free trial computes in the trial itself; a two-tower trial only drives its Ray Train
    # workers, which reserve the CPUs, so the trial reserves none (Tune refuses an empty
    # request, hence one byte of memory).
    trainable = tune.with_resources(
        tune.with_parameters(_candidate_trial, data=data),
        lambda trial_config: tune.PlacementGroupFactory([
            {"CPU": cpus_per_trial} if trial_config["trial"]["candidate"]["kind"] in ORDER_FREE_KINDS
            else {"CPU": 0, "memory": 1}]),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trial_configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent,
                                    trial_dirname_creator=lambda trial: trial.config["trial"]["candidate"]["name"],
                                    # A backstop: candidates stop themselves at their deadline.
                                    time_budget_s=config.search.budget_s * 1.5 + 120),
        run_config=tune.RunConfig(name="rayrec-selection", storage_path=str(work_dir / "tune"), verbose=0),
    )
    if ray_log_level() != "INFO":
        # Tune's newer console output prints its experiment box whatever the verbosity.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    results = tuner.fit()
    rows = _selection_rows(results, candidates)
    finished = [row for row in rows if row["val_ndcg@10"] is not None]
    if not finished:
        errors = "; ".join(f"{row['candidate']}: {row['status']}" for row in rows)
        raise RuntimeError(f"no candidate model finished training ({errors})")
    best_single = max(finished, key=lambda row: row["val_ndcg@10"])
    blend = _blend_row(finished, candidates, work_dir)
    if blend is not None:
        rows.append(blend)
    gain_needed = best_single["val_ndcg@10"] * (1 + MIN_RELATIVE_GAIN)
    winner = blend if blend is not None and blend["val_ndcg@10"] >= gain_needed else best_single
    for row in rows:
        row["selected"] = row is winner
    runner_up = max((r for r in rows if r is not winner and r is not blend and r["val_ndcg@10"] is not None),
                    key=lambda r: r["val_ndcg@10"], default=None)
    reason = (f"highest validation NDCG@10 ({winner['val_ndcg@10']:.4f}"
              + (f" vs {runner_up['val_ndcg@10']:.4f} for {runner_up['candidate']})" if runner_up else ")"))
    if blend is not None and winner is not blend:
        reason += (f"; the blend {blend['candidate']} ({blend['val_ndcg@10']:.4f}) gains less than "
                   f"{MIN_RELATIVE_GAIN:.0%} over it")
    _clear_older_model(out_dir)
    if winner is blend:
        _install_blend(work_dir, blend, data, out_dir)
    else:
        _install_winner(work_dir / winner["candidate"], out_dir)
    record = {"selected": winner["candidate"], "reason": reason, "budget_s": config.search.budget_s,
              "seconds": time.time() - started, "candidates": rows}
    (out_dir / SELECTION_FILE).write_text(json.dumps(record, indent=2))
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["selection"] = record
    metrics_path.write_text(json.dumps(metrics, indent=2))
    for line in format_selection(record).splitlines():
        log(line)
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def _blend_row(finished: list[dict[str, Any]], candidates: list[Candidate], work_dir: Path) -> dict[str, Any] | None:
    """The best sequential candidate blended with the best order-free one, weighted on their
    validation shortlists (:mod:`rayrec.training.shortlists`), as a row of the table; None
    when there are not one of each with shortlists."""
    kinds = {c.name: c.kind for c in candidates}

    def best(kind_matches) -> dict[str, Any] | None:
        return max((r for r in finished if kind_matches(kinds.get(r["candidate"]))),
                   key=lambda r: r["val_ndcg@10"], default=None)

    sequential, order_free = best(lambda kind: kind == "two_tower"), best(lambda kind: kind in ORDER_FREE_KINDS)
    if sequential is None or order_free is None:
        return None
    first = Shortlists.load(work_dir / sequential["candidate"])
    second = Shortlists.load(work_dir / order_free["candidate"])
    found = None if first is None or second is None else best_blend(first, second)
    if found is None:
        return None
    names = [sequential["candidate"], order_free["candidate"]]
    return {"candidate": "+".join(names), "val_ndcg@10": found.val_ndcg, "val_hr@10": found.val_hr, "seconds": None,
            "details": {"parts": names, "weight": found.weight}, "status": "ok",
            "description": f"blend: {names[0]} + {found.weight:.3g} x {names[1]} (weight chosen on validation)"}


def _install_blend(work_dir: Path, blend: dict[str, Any], data: PreparedData, out_dir: Path) -> None:
    """Write the blend of two candidates into ``out_dir``: each part's model under
    ``parts/<name>/`` and the blend's own files (:mod:`rayrec.models.blend`)."""
    import numpy as np

    from rayrec.models.blend import MODEL_KIND, blend_item_embeddings
    from rayrec.training.model_dir import write_model_dir

    names = blend["details"]["parts"]
    weights = dict(zip(names, (1.0, float(blend["details"]["weight"]))))  # the first part's is 1
    for name in names:
        _install_winner(work_dir / name, out_dir / "parts" / name)
    parts = [(np.load(out_dir / "parts" / name / "item_embeddings.npy"), weights[name]) for name in names]
    first_config = json.loads((out_dir / "parts" / names[0] / "config.json").read_text())
    first_metrics = json.loads((out_dir / "parts" / names[0] / "metrics.json").read_text())
    write_model_dir(
        out_dir, data, model_kind=MODEL_KIND, model_format=1, item_embeddings=blend_item_embeddings(parts),
        config={"blend": {"parts": [{"dir": f"parts/{name}", "weight": weights[name]} for name in names]},
                # What serving reads from a model's config (text search's extractor, categories).
                **{key: first_config[key] for key in ("train_config", "category_vocab") if key in first_config}},
        metrics={"best_val_ndcg@10": blend["val_ndcg@10"], "best_val_hr@10": blend["val_hr@10"],
                 **{key: first_metrics.get(key) for key in ("best_epoch", "epochs_trained", "history")}},
    )


def _selection_rows(results, candidates: list[Candidate]) -> list[dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for result in results:
        name = result.config["trial"]["candidate"]["name"]
        final = result.metrics if result.metrics and result.metrics.get("final") else None
        status = "ok" if final else (f"failed: {str(result.error).strip().splitlines()[-1][:200]}"
                                     if result.error else "stopped before finishing (budget)")
        by_name[name] = {
            "candidate": name,
            "val_ndcg@10": None if final is None else float(final["val_ndcg@10"]),
            "val_hr@10": None if final is None or final.get("val_hr@10") is None else float(final["val_hr@10"]),
            "seconds": None if final is None else round(float(final["seconds"]), 1),
            "details": {} if final is None else json.loads(final["details"]),
            "status": status,
        }
    return [dict(by_name.get(c.name, {"candidate": c.name, "val_ndcg@10": None, "status": "not run"}),
                 description=c.description) for c in candidates]


def _clear_older_model(out_dir: Path) -> None:
    """Remove an older model's files from ``out_dir`` (whatever its kind: a blend's parts, a
    two-tower's weights), keeping hidden entries such as the selection's work and checkpoints."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in list(out_dir.iterdir()):
        if not path.name.startswith("."):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _install_winner(candidate_dir: Path, out_dir: Path) -> None:
    """Move the winning candidate's model files into ``out_dir`` (replacing an older model)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in candidate_dir.iterdir():
        if path.name.startswith("."):
            continue  # its checkpoints stay behind with the other candidates'
        target = out_dir / path.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(path), target)


def format_selection(record: dict[str, Any]) -> str:
    """The selection table ``rayrec train`` prints."""
    lines = [f"{'candidate':<18}{'val NDCG@10':>12}{'val HR@10':>11}{'seconds':>9}  result"]
    for row in record["candidates"]:
        ndcg = "-" if row.get("val_ndcg@10") is None else f"{row['val_ndcg@10']:.4f}"
        hr = "-" if row.get("val_hr@10") is None else f"{row['val_hr@10']:.4f}"
        seconds = "-" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        result = "selected" if row.get("selected") else row["status"]
        lines.append(f"{row['candidate']:<18}{ndcg:>12}{hr:>11}{seconds:>9}  {result}")
    lines.append(f"selected {record['selected']}: {record['reason']}")
    return "\n".join(lines)
