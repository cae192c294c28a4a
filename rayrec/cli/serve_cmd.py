"""``rayrec serve``: start the serving graph on a local Ray (or the cluster in RAY_ADDRESS)."""

from __future__ import annotations

import os
import signal
import threading
import warnings

import click


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Trained model directory.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0 for all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option(
    "--state",
    default="rayrec-state.db",
    show_default=True,
    help="State store: a SQLite file path, a URL such as sqlite:///state.db, or redis://host:6379/0 for replicas on several machines.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    help="YAML file with more app arguments (replicas, scorers, event weights); flags win.",
)
@click.option("--num-cpus", type=click.IntRange(min=1), default=None, help="Logical CPUs for a local Ray (default: all).")
@click.option(
    "--api-keys-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File of API keys, one per line; writes and /admin/* then need 'Authorization: Bearer <key>'. "
    "Keys in $RAYREC_API_KEYS (comma-separated) count too.",
)
@click.option(
    "--model-root",
    "model_roots",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Directory /admin/reload may load models from (repeatable; default: the parent of --model).",
)
@click.option("--request-log", default=None, help="Append a JSON line per request to this file ('-': stderr).")
@click.option(
    "--topology",
    type=click.Choice(["auto", "split", "fused", "ingress"]),
    default=None,
    help="auto (default): ingress on one machine, split on a cluster of several nodes. split: a "
    "deployment per stage; fused: preprocess, encode and score in one deployment; ingress: the HTTP "
    "ingress replicas run them (no hop on reads: lowest latency).",
)
@click.option(
    "--proxy",
    type=click.Choice(["haproxy", "serve"]),
    default=None,
    help="HTTP proxy of a Ray this command starts. haproxy (default where its binary exists; it ships "
    "with ray[serve]): requests go straight to an ingress replica. serve: Ray Serve's Python proxy.",
)
@click.option(
    "--direct-ingress",
    is_flag=True,
    help="Print each ingress replica's own HTTP port (from 30000 up), which answers without any "
    "proxy; with --proxy serve this turns Serve's direct ingress on.",
)
def serve(model_dir: str, host: str, port: int, state: str, config_path: str | None, num_cpus: int | None,
          api_keys_file: str | None, model_roots: tuple[str, ...], request_log: str | None,
          topology: str | None, proxy: str | None, direct_ingress: bool) -> None:
    """Serve recommendations over HTTP until Ctrl-C.

    Joins the Ray cluster in RAY_ADDRESS if set, else starts Ray locally. The API schema is
    at http://HOST:PORT/openapi.json (interactive docs at /docs).
    """
    from rayrec.config import parse_config, read_yaml_mapping
    from rayrec.errors import ConfigError
    from rayrec.serving.config import AppArgs, check_components, nest_flat_keys

    where = config_path or "arguments"
    extra: dict = {}
    with warnings.catch_warnings(record=True) as deprecated:
        warnings.simplefilter("always", DeprecationWarning)
        if config_path:
            extra = read_yaml_mapping(config_path)
            extra = extra.get("args", extra)  # also accept a serve.yaml application's args block
            if not isinstance(extra, dict):
                raise ConfigError(f"{config_path}: args: expected a mapping of app arguments")
            try:
                extra = nest_flat_keys(extra)
            except ValueError as exc:
                raise ConfigError(f"{where}: invalid serve config: {exc}") from None
    for warning in deprecated:  # shown: a user of the CLI would never see a DeprecationWarning
        click.echo(f"{where}: {warning.message}", err=True)
    values = {**extra, "model_dir": model_dir, "state": state}
    if topology:
        values["topology"] = topology
    for group, key, flag in [("security", "api_keys_file", api_keys_file),
                             ("security", "model_roots", list(model_roots)),
                             ("observability", "request_log", request_log)]:
        if flag:  # a flag wins over the config file's value
            section = values.get(group)
            values[group] = {**(section if isinstance(section, dict) else {}), key: flag}
    args = parse_config(AppArgs, values, what="serve config", where=where)
    check_components(args, where=where)  # each scorer, source, extractor and handler, before Ray starts

    import ray
    from ray import serve as ray_serve

    from rayrec.serving.app import build_app, pick_topology, resolve_args
    from rayrec.serving.graph import proxy as http_proxy

    args = resolve_args(args)  # a bad model directory fails before Ray starts
    address = os.environ.get("RAY_ADDRESS")
    click.echo(f"starting Ray {'at ' + address if address else 'locally'} ...", err=True)
    if address:
        if proxy or direct_ingress:
            click.echo("--proxy/--direct-ingress: a cluster keeps the proxy it was started with "
                       "(RAY_SERVE_ENABLE_HA_PROXY=1 in its environment for HAProxy)", err=True)
        http_proxy.relax_proxy_health_checks()
    else:
        if proxy is None:
            proxy = http_proxy.default_proxy()
            if proxy == "serve":
                click.echo("no HAProxy binary for this platform: using Ray Serve's Python proxy (slower)", err=True)
        http_proxy.prepare_local_ray(proxy, direct_ingress)
    # "local": a new instance, as the line above says, even where another Ray runs on this machine.
    ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False)
    if args.topology == "auto":
        args = args.model_copy(update={"topology": pick_topology()})
    stop = threading.Event()
    try:
        try:
            ray_serve.start(
                http_options={"host": host, "port": port},
                logging_config={"enable_access_log": args.observability.access_log},
            )
            ray_serve.run(build_app(args), name="rayrec", route_prefix="/")
        except KeyboardInterrupt:  # Ctrl-C while starting: stop cleanly
            stop.set()
        if not stop.is_set():
            shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            front = f"proxy {proxy}" if proxy else "the cluster's proxy"
            click.echo(f"rayrec is serving model {args.model_dir} (topology {args.topology}, {front}) "
                       f"at http://{shown_host}:{port}/ (Ctrl-C to stop)")
            click.echo(f"API schema: http://{shown_host}:{port}/openapi.json")
            if direct_ingress:
                urls = http_proxy.replica_urls(host=shown_host)
                for url in urls:
                    click.echo(f"direct to an ingress replica (no proxy hop): {url}/")
                if not urls:
                    click.echo("direct ingress is not on in this Ray cluster; use the URL above", err=True)
            # Ctrl-C and SIGTERM only set a flag: a KeyboardInterrupt raised in the middle of
            # Ray's own calls could leave the cluster half shut down.
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        click.echo("shutting down ...", err=True)
    finally:
        try:
            ray_serve.shutdown()
        finally:
            ray.shutdown()
    click.echo("stopped", err=True)
