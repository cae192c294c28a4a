"""``rayrec evaluate``: leave-one-out evaluation of rayrec's model next to the baselines."""

from __future__ import annotations

import json

import click

TABLE_METRICS = ("HR@10", "NDCG@10", "MRR@10", "Recall@10", "HR@20", "NDCG@20", "MRR@20", "Recall@20",
                 "Coverage@10", "Coverage@20")


@click.command()
@click.option("--interactions", required=True, multiple=True,
              help="Interactions: CSV/TSV/Parquet file, MovieLens directory, synthetic:..., or a state store's "
                   "event log (sqlite:///path/state.db, redis://host:port/db). Repeat it to train on the union.")
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
    from rayrec.evaluation.protocol import format_table
    from rayrec.training.config import check_components, load_train_config
    from rayrec.training.evaluate import evaluate_leave_one_out
    from rayrec.training.prepare import load_training_data

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
