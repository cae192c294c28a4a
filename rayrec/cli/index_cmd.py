"""``rayrec index``: compressed item indexes saved in a model directory, for serving to load.

A scorer with ``retrieval.vectors: int8`` (or float16, pq) needs FAISS codes of the item
vectors; built at start they cost every replica a full read of the float32 file and the build
time (HNSW over a million items: minutes). ``rayrec index build`` writes them into the model
directory once; every replica then memory-maps the same file.
"""

from __future__ import annotations

import click


@click.group()
def index() -> None:
    """Compressed item indexes (float16, int8, PQ codes) saved in a model directory."""


@index.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Model directory from rayrec train (written into).")
@click.option("--vectors", type=click.Choice(["float16", "int8", "pq"]), required=True,
              help="Codes to store: as retrieval.vectors in the serve config.")
@click.option("--structure", type=click.Choice(["auto", "flat", "hnsw"]), default="auto", show_default=True,
              help="flat: scanned whole (up to exact_search_max_items); hnsw: a graph over the codes (above). "
                   "auto: hnsw from --exact-search-max-items items on.")
@click.option("--exact-search-max-items", type=click.IntRange(min=0), default=250_000, show_default=True,
              help="The serve config's retrieval.exact_search_max_items, for --structure auto.")
@click.option("--pq-bytes", type=click.IntRange(min=1), default=None,
              help="PQ: bytes per item (retrieval.pq.code_bytes; must divide the dimension). Default: dim/4.")
@click.option("--m", "m", type=click.IntRange(min=4), default=32, show_default=True,
              help="HNSW graph degree (retrieval.ann.m).")
@click.option("--ef-construction", type=click.IntRange(min=8), default=None,
              help="HNSW build breadth (retrieval.ann.ef_construction). Default: scaled with the catalogue "
                   "(80 up to 250,000 items, +80 per doubling, at most 400).")
def build(model_dir: str, vectors: str, structure: str, exact_search_max_items: int, pq_bytes: int | None,
          m: int, ef_construction: int | None) -> None:
    """Build one compressed index of the model's item vectors and save it in the model directory.

    Serving loads it (memory-mapped) when its retrieval settings match: the same vectors, the
    same code size, flat or hnsw as the catalogue size decides, the same graph degree.
    """
    from pathlib import Path

    import numpy as np

    from rayrec.errors import ModelError
    from rayrec.models.ann import faiss_available, write_compressed

    if not faiss_available():
        raise click.UsageError("compressed indexes need faiss (pip install faiss-cpu)")
    path = Path(model_dir)
    try:
        embeddings = np.load(path / "item_embeddings.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_dir}: cannot read item_embeddings.npy ({exc})") from None
    if structure == "auto":
        structure = "hnsw" if len(embeddings) > exact_search_max_items else "flat"
    try:
        record = write_compressed(path, embeddings, vectors, structure, m=m, ef_construction=ef_construction,
                                  code_bytes=pq_bytes)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    float_bytes = embeddings.shape[1] * 4
    per_item = record["bytes"] / max(1, record["rows"])
    click.echo(f"wrote {path / record['file']}: {structure} {vectors} over {record['rows']:,} items, "
               f"{per_item:,.1f} bytes per item ({float_bytes / per_item:.1f}x less than float32's {float_bytes})")
