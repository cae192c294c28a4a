"""Item cold start with the rayrec-text plugin on MovieLens, next to content-kNN and random.

    python benchmarks/cold_start.py [--datasets ml-100k ml-latest-small] [--cold-fraction 0.2]
        [--config content.yaml] [--skip-warm] [--json results.json]

Needs the plugin: ``pip install -e plugins/rayrec-text``. Text is the title, genres and (for
ml-latest-small) the user tags that the loader puts in the item text.

Cold start. 20% of the items (seeded) are held out of training entirely. For every user, the
test case is their last interaction with a cold item that follows at least ``MIN_HISTORY``
warm ones; the user's warm items before it are their training sequence and the model's input,
so nothing after the test point is trained on. The validation case (used to choose settings)
is the user's previous such cold interaction. After training, the cold items are added
through ``TrainedModel.encode_items``, the code behind ``PUT /items``, and every method ranks
the whole catalogue (warm and cold items together) with everything the user saw before the
target masked. As in serving, cold items cannot enter the user tower's input sequence.

- content-aware: the two-tower model trained with ``item_features: [text_embedding]``, new
  items' scores calibrated onto the trained items' scale as serving does by default
  (``new_items.calibrate``, :mod:`rayrec.models.new_items`; ``--new-item-boost`` sets the
  boost); "raw new-item scores" is the same model without the calibration, and "every item
  through text alone" scores trained items by their content alone too (where the model's
  content view puts new items among trained ones);
- content-kNN: score = mean cosine similarity between an item's text vector and the text
  vectors of the user's history (cold items included, their text is known);
- random: uniform scores (seeded), and its exact expectation ("random (expected)").

A model that put every new item first would top that table, so the benchmark also shows the
cost: for each test user, the first trained item after the cold test case is a second target,
ranked with the new items in the catalogue and without them, and ``cold@10`` gives the share
of top-10 slots that new items take. A last table shows the trade-off over
``new_items.boost`` (same trained model, scores only).

Warm quality. Leave-one-out NDCG@10 on all items (``rayrec evaluate`` protocol) of the
content-aware model and of the id-only default; the first must not fall below the second.

Encoding. Throughput on a sample with the cache off, then the full catalogue twice through
the on-disk cache (the second pass shows the hit rate a retraining run gets).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from _common import DATASETS  # noqa: E402  (the script's folder is on sys.path)
#: Warm items a user must have before a cold test or validation target.
MIN_HISTORY = 3
#: The content-aware model: text vectors into content_item_tower (id + text, with a second
#: softmax in which a random half of the items is represented by text alone, as new items are).
CONTENT_CONFIG = {
    "item_features": [{"name": "text_embedding"}],
    "model": {"item_encoder": "content_item_tower"},
}
THROUGHPUT_SAMPLE = 1000
COLD_METRICS = ("HR@10", "NDCG@10", "cold@10", "users")


@dataclass
class Case:
    """One ranking task: the model's input, what is masked, and the cold target (catalogue indices)."""

    model_history: np.ndarray  # warm items before the target, oldest first
    seen: np.ndarray  # every item before the target, warm and cold
    target: int


@dataclass
class ColdSplit:
    """Warm and cold items of a prepared dataset, the training sequences and the cases.

    Catalogue order: the warm items (in the trained model's vocabulary order), then the cold.
    """

    warm: np.ndarray  # indices into the full vocabulary
    cold: np.ndarray
    train_sequences: list[np.ndarray] = field(default_factory=list)  # per user, warm catalogue indices
    test: list[Case] = field(default_factory=list)
    validation: list[Case] = field(default_factory=list)
    warm_test: list[Case] = field(default_factory=list)  # a trained item next, with the new ones listed


def split_cold(full, cold_fraction: float, seed: int) -> ColdSplit:
    """Hold out ``cold_fraction`` of the items of ``full`` (a PreparedData) and build the cases."""
    num_items = full.num_items
    rng = np.random.default_rng(seed)
    is_cold_item = np.zeros(num_items, dtype=bool)
    is_cold_item[rng.choice(num_items, size=int(round(cold_fraction * num_items)), replace=False)] = True
    warm, cold = np.flatnonzero(~is_cold_item), np.flatnonzero(is_cold_item)
    catalogue_of = np.empty(num_items, dtype=np.int64)
    catalogue_of[warm] = np.arange(len(warm))
    catalogue_of[cold] = len(warm) + np.arange(len(cold))
    split = ColdSplit(warm=warm, cold=cold)
    for sequence in full.sequences:
        items = catalogue_of[sequence - 1]
        cold_here = items >= len(warm)
        warm_before = np.cumsum(~cold_here) - (~cold_here)
        eligible = np.flatnonzero(cold_here & (warm_before >= MIN_HISTORY))
        if len(eligible) == 0:
            split.train_sequences.append(items[~cold_here])
            continue
        test_at = eligible[-1]
        before = items[:test_at]
        split.train_sequences.append(before[before < len(warm)])

        def case(at: int) -> Case:
            seen = items[:at]
            return Case(model_history=seen[seen < len(warm)], seen=seen, target=int(items[at]))

        split.test.append(case(test_at))
        if len(eligible) >= 2:
            split.validation.append(case(eligible[-2]))
        warm_after = np.flatnonzero(~cold_here[test_at + 1:])
        if len(warm_after):  # the first trained item after the cold test case: did new items crowd it out?
            split.warm_test.append(case(test_at + 1 + int(warm_after[0])))
    return split


def warm_training_data(full, split: ColdSplit, item_features: list[dict]):
    """A PreparedData with only the warm items and the cut-off sequences (users with none dropped)."""
    from rayrec.schema import Items, Vocabulary
    from rayrec.training.prepare import PreparedData, category_matrix, item_content
    from rayrec.models.factory import ItemInputs

    item_vocab = Vocabulary(full.item_vocab.ids[i] for i in split.warm)
    records = [full.items.record(int(i)) for i in split.warm]
    items = Items(item_id=[r["item_id"] for r in records], title=[r["title"] for r in records],
                  text=[r["text"] for r in records], categories=[list(r["categories"]) for r in records])
    users = [u for u, s in enumerate(split.train_sequences) if len(s)]
    category_ids, category_vocab = category_matrix(items, len(item_vocab))
    content = item_content(items, item_features, len(item_vocab))
    return PreparedData(
        name=f"{full.name}-warm",
        user_vocab=Vocabulary(full.user_vocab.ids[u] for u in users),
        item_vocab=item_vocab,
        sequences=[split.train_sequences[u] + 1 for u in users],
        item_inputs=ItemInputs(category_ids=category_ids, num_categories=len(category_vocab), content=content),
        category_vocab=category_vocab,
        items=items,
    )


def rank_cases(score_fn, cases: list[Case], num_items: int, num_warm: int) -> dict[str, float]:
    """HR/NDCG@10 of the cold targets over the whole catalogue, plus ``cold@10``: the share of
    top-10 slots that went to cold items (20% of the catalogue)."""
    from rayrec.evaluation.metrics import mask_history, top_k
    from rayrec.evaluation.protocol import evaluate_ranking

    seen = [c.seen for c in cases]
    targets = np.array([c.target for c in cases], dtype=np.int64)
    cold_slots = []

    def scores_of(case_indices: np.ndarray) -> np.ndarray:
        scores = np.asarray(score_fn([cases[i] for i in case_indices]), dtype=np.float32)
        masked = mask_history(scores.copy(), [seen[i] for i in case_indices])
        cold_slots.append((top_k(masked, 10) >= num_warm).mean(axis=1))
        return scores

    results = evaluate_ranking(scores_of, seen, targets, num_items, ks=(10,))
    results["cold@10"] = float(np.concatenate(cold_slots).mean())
    return results


def expected_random(cases: list[Case], num_items: int, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of uniformly random scores in expectation (the sampled row is noisy:
    a handful of hits among ~600 cases)."""
    candidates = np.array([num_items - len(np.unique(c.seen)) for c in cases], dtype=np.float64)
    discount = (1.0 / np.log2(np.arange(2, k + 2))).sum()
    return {"HR@10": float(np.mean(k / candidates)), "NDCG@10": float(np.mean(discount / candidates)),
            "cold@10": None, "users": len(cases)}


def text_encoder_stats(records: list[dict], options: dict) -> tuple[np.ndarray, dict]:
    """Text vectors of all items plus throughput (cache off, on a sample) and cache hit rates."""
    from rayrec_text import TextEncoder

    sample = records[:THROUGHPUT_SAMPLE]
    uncached = TextEncoder({**options, "cache_dir": None, "progress": False})
    uncached.sentence_model  # load outside the timing
    uncached.extract(sample)
    encoder = TextEncoder(options)
    started = time.perf_counter()
    vectors = encoder.extract(records)
    first = encoder.last_stats
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = encoder.extract(records)
    second = encoder.last_stats
    second_seconds = time.perf_counter() - started
    assert np.array_equal(vectors, again)
    return vectors, {
        "items": len(records),
        "throughput_items_per_s": uncached.last_stats.items_per_second,
        "throughput_sample": len(sample),
        "first_pass": {"hits": first.hits, "misses": first.misses, "hit_rate": first.hit_rate, "seconds": first_seconds},
        "second_pass": {"hits": second.hits, "misses": second.misses, "hit_rate": second.hit_rate,
                        "seconds": second_seconds},
    }


def run_dataset(name: str, args, content_config: dict, log) -> dict:
    from rayrec.data import load_dataset
    from rayrec.models.trained import TrainedModel
    from rayrec.training.config import TrainConfig
    from rayrec.training.evaluate import evaluate_leave_one_out
    from rayrec.training.local import train_prepared_in_process
    from rayrec.training.prepare import prepare

    path = DATASETS / name
    dataset = load_dataset(str(path))
    full = prepare(dataset)
    print(f"\n== {name}: {len(full.user_vocab):,} users, {full.num_items:,} items, "
          f"{full.num_interactions:,} interactions", flush=True)
    result: dict = {"users": len(full.user_vocab), "items": full.num_items}

    # -- encoding ------------------------------------------------------------------------------
    config = TrainConfig(**content_config)
    text_spec = next((f for f in config.item_features if f.name == "text_embedding"), None)
    if text_spec is None:
        raise SystemExit("the content-aware config must list text_embedding in item_features")
    if args.cache_dir:
        text_spec.options = {**text_spec.options, "cache_dir": args.cache_dir}
    text_options = text_spec.options
    vectors, encoding = text_encoder_stats(full.items.records(), text_options)
    result["encoding"] = encoding
    print(f"encoding: {encoding['throughput_items_per_s']:.0f} items/s (cache off, {encoding['throughput_sample']} "
          f"items); full catalogue: first pass {encoding['first_pass']['hits']:,} cached / "
          f"{encoding['first_pass']['misses']:,} encoded, second pass hit rate "
          f"{encoding['second_pass']['hit_rate']:.0%} ({encoding['second_pass']['seconds']:.1f}s)", flush=True)

    # -- cold start ----------------------------------------------------------------------------
    split = split_cold(full, args.cold_fraction, args.seed)
    num_warm, num_items = len(split.warm), full.num_items
    print(f"cold start: {len(split.cold):,} cold items; {len(split.test)} test and {len(split.validation)} "
          f"validation cases", flush=True)
    warm_data = warm_training_data(full, split, [f.model_dump() for f in config.item_features])
    text_catalogue = np.vstack([vectors[split.warm], vectors[split.cold]])
    cold_records = [full.items.record(int(i)) for i in split.cold]
    with tempfile.TemporaryDirectory(prefix="rayrec-cold-start-") as model_dir:
        started = time.perf_counter()
        train_prepared_in_process(warm_data, model_dir, config, log=log)
        train_seconds = time.perf_counter() - started
        model = TrainedModel.load(model_dir)
        started = time.perf_counter()
        cold_vectors = model.encode_items(cold_records)  # what PUT /items does, item by item or in bulk
        add_seconds = time.perf_counter() - started
        item_vectors = np.vstack([model.item_embeddings, cold_vectors])

    def model_scores_with(calibration):
        def model_scores(cases: list[Case]) -> np.ndarray:
            user_vectors, _ = model.encode_histories([c.model_history for c in cases])
            scores = user_vectors @ item_vectors.T
            if calibration is not None:  # what serving does with new_items.calibrate (the default)
                scores[:, num_warm:] = calibration.apply(user_vectors, scores[:, num_warm:])
            return scores
        return model_scores

    def without_new_items(score_fn):
        def scores(cases: list[Case]) -> np.ndarray:
            result = score_fn(cases)
            result[:, num_warm:] = -np.inf
            return result
        return scores

    def knn_scores(cases: list[Case]) -> np.ndarray:
        # Unit text vectors: the mean of cosines equals the cosine with the mean (unnormalised).
        profiles = np.stack([text_catalogue[c.seen].mean(axis=0) for c in cases])
        return profiles @ text_catalogue.T

    rng = np.random.default_rng(args.seed)

    def random_scores(cases: list[Case]) -> np.ndarray:
        return rng.random((len(cases), num_items), dtype=np.float32)

    calibration = None if args.raw_new_item_scores else model.new_item_calibration(args.new_item_boost)
    model_scores = model_scores_with(calibration)
    raw_scores = model_scores_with(None)
    text_alone_vectors = np.vstack([model.trained_items_from_content(), cold_vectors])

    def text_alone_scores(cases: list[Case]) -> np.ndarray:
        # Every item as if it were new: where the model's content view alone puts new items.
        user_vectors, _ = model.encode_histories([c.model_history for c in cases])
        return user_vectors @ text_alone_vectors.T

    methods = {"content-aware model": model_scores, "same model, raw new-item scores": raw_scores,
               "same model, every item through text alone": text_alone_scores,
               "content-kNN": knn_scores, "random": random_scores}
    if calibration is None:
        del methods["same model, raw new-item scores"]
    cold = {split_name: {**{method: rank_cases(fn, cases, num_items, num_warm) for method, fn in methods.items()},
                         "random (expected)": expected_random(cases, num_items)}
            for split_name, cases in (("validation", split.validation), ("test", split.test))}
    # The other side of the trade: a model that ranks every new item first would win above.
    crowding = {"content-aware model": rank_cases(model_scores, split.warm_test, num_items, num_warm),
                "same model, raw new-item scores": rank_cases(raw_scores, split.warm_test, num_items, num_warm),
                "same model, new items left out": rank_cases(without_new_items(model_scores), split.warm_test,
                                                             num_items, num_warm)}
    if calibration is None:
        del crowding["same model, raw new-item scores"]
    result["cold_start"] = {**cold, "warm_targets_with_new_items": crowding, "train_seconds": train_seconds,
                            "add_cold_items_seconds": add_seconds, "cold_items": len(split.cold),
                            "new_item_boost": None if calibration is None else args.new_item_boost}
    print(f"trained in {train_seconds:.0f}s; {len(split.cold):,} cold items added through encode_items in "
          f"{add_seconds:.1f}s")
    print(format_rows(cold["test"], "cold-start test (targets: cold items; ranking: whole catalogue)"))
    print(format_rows(cold["validation"], "cold-start validation"))
    print(format_rows(crowding, "trained-item targets (the first after the cold test case), new items in the catalogue"))
    if calibration is not None:
        result["cold_start"]["boost_trade_off"] = trade_off = boost_trade_off(
            calibration, model_scores_with, crowding["same model, new items left out"]["NDCG@10"], split, num_items,
            num_warm, args.boosts)
        print(format_trade_off(trade_off))

    # -- warm quality --------------------------------------------------------------------------
    if not args.skip_warm:
        warm: dict[str, dict] = {}
        for label, warm_config in (("content-aware model", config), ("id-only default", TrainConfig())):
            data = prepare(dataset, item_feature_extractors=[f.model_dump() for f in warm_config.item_features])
            started = time.perf_counter()
            [metrics] = evaluate_leave_one_out(data, warm_config, in_process=True, baselines=False, log=log).values()
            warm[label] = {**metrics, "seconds": time.perf_counter() - started}
        result["warm"] = warm
        print(format_rows(warm, "warm leave-one-out (all items)", metrics=("HR@10", "NDCG@10", "users")))
    return result


def boost_trade_off(calibration, model_scores_with, trained_ndcg_without_new_items: float, split: ColdSplit,
                    num_items: int, num_warm: int, boosts: list[float]) -> dict[str, dict]:
    """Per ``new_items.boost``: new items' HR/NDCG@10 over random, their share of the top 10, and
    the share of NDCG@10 that trained-item targets keep (same trained model, scores only)."""
    random_test = expected_random(split.test, num_items)
    random_validation = expected_random(split.validation, num_items)
    rows = {}
    for boost in boosts:
        scores = model_scores_with(calibration.with_boost(boost))
        test = rank_cases(scores, split.test, num_items, num_warm)
        validation = rank_cases(scores, split.validation, num_items, num_warm)
        trained = rank_cases(scores, split.warm_test, num_items, num_warm)
        rows[f"{boost:+.2f}"] = {
            "test HR@10 x random": test["HR@10"] / random_test["HR@10"],
            "test NDCG@10 x random": test["NDCG@10"] / random_test["NDCG@10"],
            "validation NDCG@10 x random": validation["NDCG@10"] / random_validation["NDCG@10"],
            "cold@10": test["cold@10"],
            "trained targets keep": trained["NDCG@10"] / max(trained_ndcg_without_new_items, 1e-9),
        }
    return rows


def format_trade_off(rows: dict[str, dict]) -> str:
    lines = ["\nnew_items.boost trade-off (one trained model; boost in standard deviations of the user's scores)",
             f"{'boost':>6}  {'test HR@10':>10}  {'test NDCG@10':>12}  {'val NDCG@10':>11}  {'cold@10':>7}  "
             f"{'trained targets keep':>20}"]
    for boost, row in rows.items():
        lines.append(f"{boost:>6}  {row['test HR@10 x random']:>9.1f}x  {row['test NDCG@10 x random']:>11.1f}x  "
                     f"{row['validation NDCG@10 x random']:>10.1f}x  {row['cold@10']:>7.0%}  "
                     f"{row['trained targets keep']:>20.0%}")
    return "\n".join(lines)


def format_rows(rows: dict, title: str, metrics=COLD_METRICS) -> str:
    from rayrec.evaluation.protocol import format_table

    return f"\n{title}\n{format_table(rows, metrics=metrics)}"


def verdict(results: dict) -> list[str]:
    lines = []
    for name, result in results.items():
        test = result["cold_start"]["test"]
        model, knn, rand = (test[m]["NDCG@10"] for m in ("content-aware model", "content-kNN", "random (expected)"))
        model_hr, rand_hr = test["content-aware model"]["HR@10"], test["random (expected)"]["HR@10"]
        crowding = result["cold_start"]["warm_targets_with_new_items"]
        with_new, without = (crowding[m]["NDCG@10"] for m in ("content-aware model", "same model, new items left out"))
        lines.append(f"{name}: trained-item targets keep NDCG@10 {with_new:.4f} of {without:.4f} with the new "
                     f"items in the catalogue ({with_new / max(without, 1e-9):.0%}); new items take "
                     f"{test['content-aware model']['cold@10']:.0%} of top-10 slots "
                     f"({result['cold_start']['cold_items'] / result['items']:.0%} of the catalogue)")
        lines.append(f"{name}: cold NDCG@10 model {model:.4f} vs content-kNN {knn:.4f} "
                     f"({'beats' if model > knn else 'MISSES'}); model/expected random HR@10 "
                     f"{model_hr / max(rand_hr, 1e-9):.0f}x, NDCG@10 {model / max(rand, 1e-9):.0f}x "
                     f"({'>= 10x' if model_hr >= 10 * rand_hr and model >= 10 * rand else 'MISSES 10x'})")
        if "warm" in result:
            content, default = (result["warm"][m]["NDCG@10"] for m in ("content-aware model", "id-only default"))
            lines.append(f"{name}: warm NDCG@10 content-aware {content:.4f} vs id-only {default:.4f} "
                         f"({'ok' if content >= default else 'BELOW'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-latest-small"])
    parser.add_argument("--cold-fraction", type=float, default=0.2, help="Share of items held out of training.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the cold-item draw and the random baseline.")
    parser.add_argument("--config", type=Path, default=None,
                        help="Training config YAML of the content-aware model (default: text_embedding, "
                             "content_item_tower).")
    parser.add_argument("--cache-dir", default=None, help="Vector cache directory (default: the plugin's).")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads.")
    parser.add_argument("--new-item-boost", type=float, default=0.0,
                        help="new_items.boost of the content-aware model's calibrated scores (serving's default: 0).")
    parser.add_argument("--raw-new-item-scores", action="store_true",
                        help="Compare new items' raw scores with trained items' (new_items.calibrate: false).")
    parser.add_argument("--boosts", type=float, nargs="*", default=[-0.5, -0.25, 0.0, 0.25, 0.5],
                        help="Boosts of the trade-off table.")
    parser.add_argument("--skip-warm", action="store_true", help="Skip the two warm leave-one-out trainings.")
    parser.add_argument("--verbose", action="store_true", help="Print the training log.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    content_config = CONTENT_CONFIG
    if args.config is not None:
        from rayrec.config import read_yaml_mapping

        content_config = read_yaml_mapping(args.config)
    log = print if args.verbose else (lambda line: None)
    results = {}
    for name in args.datasets:
        if not (DATASETS / name).exists():
            print(f"skipping {name}: {DATASETS / name} not found", file=sys.stderr)
            continue
        results[name] = run_dataset(name, args, content_config, log)
    print("\n" + "\n".join(verdict(results)))
    if args.json:
        args.json.write_text(json.dumps({"config": content_config, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
