"""``rayrec evaluate``: leave-one-out evaluation of rayrec's model next to the baselines."""

from __future__ import annotations

import json
import tempfile

import click
import numpy as np

TABLE_METRICS = ("HR@10", "NDCG@10", "MRR@10", "Recall@10", "HR@20", "NDCG@20", "MRR@20", "Recall@20",
                 "Coverage@10", "Coverage@20")


def evaluate_leave_one_out(data, config, *, in_process: bool = False, baselines: bool = True,
                           log=click.echo, save_model: str | None = None) -> dict[str, dict[str, float]]:
    """Train on all but each user's last two items (second to last = validation, for early
    stopping and baseline tuning), then rank all items for the last one, history masked.

    The model is trained exactly as ``rayrec train`` would be on the data without each user's
    last item, so ``save_model`` keeps a directory whose ``rayrec recommend`` output scores
    the same as reported here. Returns ``{method name: metrics}``.
    """
    import dataclasses

    from rayrec.evaluation.baselines import ItemKNNBaseline, PopularityBaseline, fit_ease_tuned
    from rayrec.evaluation.protocol import evaluate_ranking
    from rayrec.models.servable import load_model_dir

    train, validation, test = data.leave_one_out()
    train0 = [s - 1 for s in train]
    validation0, test0 = validation - 1, test - 1  # -1 = no target
    # At test time every method sees the validation item as part of the history.
    history0 = [np.concatenate([t, [v]]) if v >= 0 else t for t, v in zip(train0, validation0)]
    num_items = data.num_items
    results: dict[str, dict[str, float]] = {}
    without_test = dataclasses.replace(data, sequences=[h + 1 for h in history0])

    with tempfile.TemporaryDirectory(prefix="rayrec-evaluate-") as scratch:
        model_dir = save_model or scratch
        if in_process:
            from rayrec.training.local import train_prepared_in_process

            train_prepared_in_process(without_test, model_dir, config, log=log)
        else:
            from rayrec.training.trainer import train_distributed

            train_distributed(without_test, model_dir, config, log=log)
        model = load_model_dir(model_dir)

        def model_scores(user_indices: np.ndarray) -> np.ndarray:
            vectors, _ = model.encode_histories([history0[u] for u in user_indices], user_indices)
            return vectors @ model.item_embeddings.T

        name = f"rayrec ({config.model.user_encoder})"
        results[name] = evaluate_ranking(model_scores, history0, test0, num_items)
    if baselines:
        popularity = PopularityBaseline().fit(train0, num_items)
        results["popularity"] = evaluate_ranking(lambda u: popularity.score_histories([history0[i] for i in u]),
                                                 history0, test0, num_items)
        ease, l2 = fit_ease_tuned(train0, validation0, num_items)
        results[f"EASE (λ={l2:g})"] = evaluate_ranking(lambda u: ease.score_histories([history0[i] for i in u]),
                                                       history0, test0, num_items)
        knn = ItemKNNBaseline().fit(train0, num_items)
        results["item-kNN"] = evaluate_ranking(lambda u: knn.score_histories([history0[i] for i in u]),
                                               history0, test0, num_items)
    return results


@click.command()
@click.option("--interactions", required=True, help="Interactions: CSV/TSV/Parquet file, MovieLens directory, or synthetic:...")
@click.option("--items", default=None, help="Items file.")
@click.option("--users", default=None, help="Users file.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="Training config YAML.")
@click.option("--user-encoder", default=None, help="User tower to evaluate (default sasrec).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.")
@click.option("--num-workers", type=click.IntRange(min=1), default=None, help="Ray Train workers.")
@click.option("--in-process", is_flag=True, help="Train in this process without Ray.")
@click.option("--no-baselines", is_flag=True, help="Skip the popularity, EASE and item-kNN baselines.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--save-model", type=click.Path(file_okay=False), default=None,
              help="Keep the evaluated model here (trained without each user's last item).")
def evaluate(interactions, items, users, config_path, user_encoder, epochs, num_workers, in_process, no_baselines,
             as_json, save_model):
    """Leave-one-out evaluation (last = test, second to last = validation, full ranking)."""
    from rayrec.cli.train_cmd import load_training_data
    from rayrec.evaluation.protocol import format_table
    from rayrec.training.config import check_components, load_train_config

    config = load_train_config(config_path, **{"model.user_encoder": user_encoder, "epochs": epochs,
                                               "num_workers": num_workers})
    check_components(config)
    log = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    data = load_training_data(interactions, items, users, config, echo=log)
    results = evaluate_leave_one_out(data, config, in_process=in_process, baselines=not no_baselines, log=log,
                                     save_model=save_model)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(format_table(results, metrics=TABLE_METRICS))
