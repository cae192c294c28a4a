"""MovieLens in its original layouts: ``ml-100k`` and the ``ml-latest`` family.

Every rating becomes an interaction with ``event_type="rating"`` and ``value`` = the rating;
ids keep their original text (``"242"``). Movie titles and genres become item metadata;
ml-latest tags are appended to the item's ``text``; ml-100k demographics become user features.
"""

from __future__ import annotations

from pathlib import Path

from rayrec.components import DataSource
from rayrec.data.interactions_file import FileSourceOptions, load_interaction_table
from rayrec.data.malformed import MalformedRows
from rayrec.data.tables import find_column, read_delimited, read_delimited_header, require_file
from rayrec.errors import DataError
from rayrec.schema import ITEM_ID, TIMESTAMP, USER_ID, VALUE, Dataset, Items, LoadReport, Users

RATING_EVENT = "rating"
ML100K_GENRE_FLAGS = 19
# ml-100k's u.item has 5 descriptive fields before the genre flags.
ML100K_ITEM_FIELDS = ("movie_id", "title", "release_date", "video_release_date", "imdb_url")
ML100K_USER_FIELDS = ("user_id", "age", "gender", "occupation", "zip_code")
ML100K_GENRES_FALLBACK = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
ML_LATEST_NO_GENRES = "(no genres listed)"
# Age buckets as in MovieLens 1M: exact ages are too sparse to be useful categories.
AGE_BUCKETS = ((18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55"))


def age_bucket(age: str) -> str:
    """``"24"`` -> ``"18-24"``; unparseable ages become ``"unknown"``."""
    try:
        years = int(age)
    except ValueError:
        return "unknown"
    for upper, label in AGE_BUCKETS:
        if years < upper:
            return label
    return "56+"


def _check_directory(path: str | Path, required: str, what: str) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"not a directory; expected {what}", path=str(directory))
    require_file(directory / required, f"the {required} file of {what}")
    return directory


class MovieLens100K(DataSource):
    """MovieLens 100K: ``u.data`` ratings, ``u.item`` movies, ``u.user`` demographics."""

    name = "movielens-100k"
    description = "MovieLens 100K directory (u.data, u.item, u.user, u.genre)."
    Options = FileSourceOptions

    def can_load(self, path: str) -> bool:
        directory = Path(path)
        return directory.is_dir() and (directory / "u.data").is_file()

    def load(self, path: str) -> Dataset:
        directory = _check_directory(path, "u.data", "a MovieLens 100K directory (u.data, u.item, u.user)")
        report = LoadReport()
        ratings_path = directory / "u.data"
        names = (USER_ID, ITEM_ID, VALUE, TIMESTAMP)

        def read(exact: bool, malformed: MalformedRows):
            return read_delimited(
                ratings_path, delimiter="\t", malformed=malformed, column_names=names, exact=exact, integer_hint=(TIMESTAMP,)
            )

        interactions = load_interaction_table(
            ratings_path,
            read,
            {name: name for name in names},
            report,
            strict=self.options.strict,
            max_malformed_fraction=self.options.max_malformed_fraction,
            default_event_type=RATING_EVENT,
        )
        items = self._items(directory, report) if (directory / "u.item").is_file() else None
        users = self._users(directory, report) if (directory / "u.user").is_file() else None
        return Dataset(name=directory.resolve().name, interactions=interactions, items=items, users=users, report=report)

    @staticmethod
    def _genres(directory: Path) -> list[str]:
        genre_path = directory / "u.genre"
        if not genre_path.is_file():
            return list(ML100K_GENRES_FALLBACK)
        by_index: dict[int, str] = {}
        for line in genre_path.read_text(encoding="latin-1").splitlines():
            name, _, index = line.strip().rpartition("|")
            if name and index.isdigit():
                by_index[int(index)] = name
        return [by_index.get(i, ML100K_GENRES_FALLBACK[i]) for i in range(ML100K_GENRE_FLAGS)]

    def _items(self, directory: Path, report: LoadReport) -> Items:
        item_path = directory / "u.item"
        genres = self._genres(directory)
        columns = list(ML100K_ITEM_FIELDS) + [f"genre_{i}" for i in range(ML100K_GENRE_FLAGS)]
        malformed = MalformedRows(item_path, strict=self.options.strict, max_fraction=self.options.max_malformed_fraction)
        # Titles contain quote characters, and the file is latin-1: no quoting, latin-1.
        table = read_delimited(
            item_path, delimiter="|", malformed=malformed, column_names=columns,
            encoding="latin-1", quoting=False, exact=True,
        )
        malformed.check(table.rows_read)
        malformed.record_into(report)
        flags = [table.columns[f"genre_{i}"] for i in range(ML100K_GENRE_FLAGS)]
        categories = [
            [genres[g] for g in range(ML100K_GENRE_FLAGS) if flags[g][row].strip() == "1"]
            for row in range(len(table))
        ]
        return Items(
            item_id=[value.strip() for value in table.columns["movie_id"]],
            title=[value.strip() for value in table.columns["title"]],
            categories=categories,
        )

    def _users(self, directory: Path, report: LoadReport) -> Users:
        user_path = directory / "u.user"
        malformed = MalformedRows(user_path, strict=self.options.strict, max_fraction=self.options.max_malformed_fraction)
        table = read_delimited(
            user_path, delimiter="|", malformed=malformed, column_names=ML100K_USER_FIELDS,
            encoding="latin-1", quoting=False, exact=True,
        )
        malformed.check(table.rows_read)
        malformed.record_into(report)
        return Users(
            user_id=[value.strip() for value in table.columns["user_id"]],
            features={
                "age": [age_bucket(value.strip()) for value in table.columns["age"]],
                "gender": [value.strip() for value in table.columns["gender"]],
                "occupation": [value.strip() for value in table.columns["occupation"]],
            },
        )


def _require_columns(path: Path, header: list[str], header_line: int, needed: dict[str, str]) -> dict[str, str]:
    """Map our names to the header's MovieLens names, or DataError listing what was found."""
    found = {ours: find_column(header, theirs) for ours, theirs in needed.items()}
    missing = [needed[ours] for ours, column in found.items() if column is None]
    if missing:
        raise DataError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; the header has "
            f"{header}, expected {', '.join(needed.values())}",
            path=str(path),
            line=header_line,
            column=missing[0],
        )
    return found  # type: ignore[return-value]


class MovieLensLatest(DataSource):
    """MovieLens latest(-small): ``ratings.csv``, ``movies.csv`` and optional ``tags.csv``."""

    name = "movielens-latest"
    description = "MovieLens latest/latest-small directory (ratings.csv, movies.csv, tags.csv)."
    Options = FileSourceOptions

    def can_load(self, path: str) -> bool:
        directory = Path(path)
        return directory.is_dir() and (directory / "ratings.csv").is_file() and (directory / "movies.csv").is_file()

    def load(self, path: str) -> Dataset:
        directory = _check_directory(path, "ratings.csv", "a MovieLens latest directory (ratings.csv, movies.csv)")
        report = LoadReport()
        ratings_path = directory / "ratings.csv"
        header, header_line = read_delimited_header(ratings_path, ",", expected="userId,movieId,rating,timestamp")
        columns = _require_columns(
            ratings_path, header, header_line,
            {USER_ID: "userId", ITEM_ID: "movieId", VALUE: "rating", TIMESTAMP: "timestamp"},
        )

        def read(exact: bool, malformed: MalformedRows):
            return read_delimited(
                ratings_path, delimiter=",", malformed=malformed, exact=exact, integer_hint=(columns[TIMESTAMP],)
            )

        interactions = load_interaction_table(
            ratings_path,
            read,
            columns,
            report,
            strict=self.options.strict,
            max_malformed_fraction=self.options.max_malformed_fraction,
            default_event_type=RATING_EVENT,
        )
        items = self._items(directory, report) if (directory / "movies.csv").is_file() else None
        return Dataset(name=directory.resolve().name, interactions=interactions, items=items, report=report)

    def _read(self, path: Path, needed: dict[str, str], report: LoadReport):
        header, header_line = read_delimited_header(path, ",", expected=",".join(needed.values()))
        columns = _require_columns(path, header, header_line, needed)
        malformed = MalformedRows(path, strict=self.options.strict, max_fraction=self.options.max_malformed_fraction)
        table = read_delimited(path, delimiter=",", malformed=malformed, exact=True)
        malformed.check(table.rows_read)
        malformed.record_into(report)
        return {ours: table.columns[theirs] for ours, theirs in columns.items()}

    def _items(self, directory: Path, report: LoadReport) -> Items:
        movies = self._read(directory / "movies.csv", {"id": "movieId", "title": "title", "genres": "genres"}, report)
        item_ids = [value.strip() for value in movies["id"]]
        categories = [
            [] if genres.strip() == ML_LATEST_NO_GENRES else [g.strip() for g in genres.split("|") if g.strip()]
            for genres in movies["genres"]
        ]
        # Tags, deduplicated per movie case-insensitively, in file order, become the item text.
        tags_by_item: dict[str, dict[str, str]] = {}
        tags_path = directory / "tags.csv"
        if tags_path.is_file():
            tags = self._read(tags_path, {"id": "movieId", "tag": "tag"}, report)
            for item_id, tag in zip(tags["id"], tags["tag"]):
                tag = tag.strip()
                if tag:
                    tags_by_item.setdefault(item_id.strip(), {}).setdefault(tag.lower(), tag)
        texts = ["; ".join(tags_by_item.get(item_id, {}).values()) for item_id in item_ids]
        return Items(
            item_id=item_ids,
            title=[value.strip() for value in movies["title"]],
            text=texts,
            categories=categories,
        )
