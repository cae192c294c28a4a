"""The data layer: loaders (data sources), preprocessing, splits and the synthetic generator.

Everything other layers need is importable from here::

    from rayrec.data import load_dataset, preprocess, build_vocabularies, user_sequences, leave_one_out
"""

from rayrec.data.interactions_file import FileSourceOptions, InteractionsFileSource, load_interactions_file
from rayrec.data.loading import load_dataset, load_datasets
from rayrec.data.malformed import MalformedRows
from rayrec.data.metadata import load_items_file, load_users_file
from rayrec.data.movielens import MovieLens100K, MovieLensLatest
from rayrec.data.preprocessing import build_vocabularies, factorize, preprocess, user_sequences
from rayrec.data.splits import Split, hold_out_last, leave_one_out, leave_one_out_sequences, temporal_split
from rayrec.data.synthetic import (
    SyntheticConfig,
    SyntheticSource,
    SyntheticTruth,
    generate,
    iter_chunks,
    parse_synthetic_spec,
    synthetic_truth,
    write_synthetic,
)

__all__ = [
    "FileSourceOptions",
    "InteractionsFileSource",
    "MalformedRows",
    "MovieLens100K",
    "MovieLensLatest",
    "Split",
    "SyntheticConfig",
    "SyntheticSource",
    "SyntheticTruth",
    "build_vocabularies",
    "factorize",
    "generate",
    "hold_out_last",
    "iter_chunks",
    "leave_one_out",
    "leave_one_out_sequences",
    "load_dataset",
    "load_datasets",
    "load_interactions_file",
    "load_items_file",
    "load_users_file",
    "parse_synthetic_spec",
    "preprocess",
    "synthetic_truth",
    "temporal_split",
    "user_sequences",
    "write_synthetic",
]
