"""``rayrec train``: train a two-tower model with Ray Train and write a model directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--interactions", required=True, multiple=True,
              help="Interactions: CSV/TSV/Parquet file, MovieLens directory, synthetic:..., or a state store's "
                   "event log (sqlite:///path/state.db, redis://host:port/db). Repeat it to train on the union.")
@click.option("--items", default=None, help="Items file (item_id, title, text/description, categories).")
@click.option("--users", default=None, help="Users file (user_id plus categorical features).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="Training config YAML.")
@click.option("--user-encoder", default=None, help="User tower: sasrec (default), gru, mean, or a plugin's.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs (early stopping may end sooner).")
@click.option("--num-workers", type=click.IntRange(min=1), default=None, help="Ray Train data-parallel workers.")
@click.option("--use-gpu", is_flag=True, default=None, help="Train on GPUs, one per worker.")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Minutes the model search may take (default 15).")
@click.option("--no-search", is_flag=True, help="Train the one configured model instead of searching.")
@click.option("--resume", is_flag=True,
              help="Continue the run an earlier `rayrec train` into the same --out left (a killed driver), "
                   "from its latest checkpoint in the storage (implies --no-search).")
@click.option("--storage", default=None, metavar="PATH_OR_URI",
              help="Where the run's checkpoints go (Ray Train's storage path): a local path or a URI "
                   "(file://, s3://, gs://, abfs://, hdfs://); default OUT/.checkpoints. On a cluster use shared "
                   "storage here, and an --out every node can reach.")
@click.option("--init-from", "init_from", default=None, type=click.Path(file_okay=False, exists=True),
              help="Warm-start from a previous two-tower model directory: its architecture and weights, new "
                   "items and users added (implies --no-search).")
@click.option("--in-process", is_flag=True, help="Train the configured model in this process without Ray.")
def train(interactions, items, users, out_dir, config_path, user_encoder, epochs, num_workers, use_gpu, budget,
          no_search, resume, storage, init_from, in_process):
    """Train on every interaction of the inputs and write a model directory.

    Several --interactions (files, a state store's event log) train on their union; a user
    erased in a state store (DELETE /users/{id}) is dropped from all of them.

    By default a few candidate models (sequential, order-free, content-aware where the items
    have text) are trained as Ray Tune trials, each validated on every user's last interaction,
    and the best is kept; the table of what was tried is printed and kept in selection.json.
    """
    from rayrec.training.config import check_components, load_train_config
    from rayrec.training.prepare import load_training_data

    config = load_train_config(config_path, **{
        "model.user_encoder": user_encoder, "epochs": epochs, "num_workers": num_workers, "use_gpu": use_gpu,
        "search.budget_s": None if budget is None else budget * 60,
        "search.enabled": False if (no_search or resume or in_process or init_from) else None})
    if init_from is not None:
        from rayrec.training.warm_start import warm_start_config

        config = warm_start_config(init_from, config)
    check_components(config)
    # Parquet is read with Ray Data (Ray Train workers read their shards, the search's
    # order-free trials the whole of it); --in-process trains on every sequence here.
    data = load_training_data(interactions, items, users, config, echo=click.echo, ray_data=not in_process)
    initial_weights = None
    if init_from is not None:
        from rayrec.training.warm_start import initial_weights as warm_start_weights

        initial_weights = warm_start_weights(init_from, data, config, log=click.echo)
    if in_process:
        from rayrec.training.local import train_prepared_in_process

        path = train_prepared_in_process(data, out_dir, config, initial_weights=initial_weights)
    elif config.search.enabled:
        from rayrec.training.selection import select_and_train

        path = select_and_train(data, out_dir, config, storage=storage)
    else:
        from rayrec.training.trainer import train_distributed

        path = train_distributed(data, out_dir, config, resume=resume, storage=storage,
                                 initial_weights=initial_weights)
    written = [name for name in ("metrics.json", "training_curve.png") if (Path(path) / name).exists()]
    click.echo(f"model written to {path} ({', '.join(written)})")
