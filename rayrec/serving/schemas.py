"""The HTTP contract (pydantic models, shown at ``/openapi.json``) and the messages the
stages pass each other.

An explanation is ``{"because": [item ids], "source": ..., "notes": [...]}``: ``because`` lists up to three
items of the user's recent history that contributed most to the recommendation (the user
tower's attribution of each history position times that item's cosine similarity to the
recommended item); ``source`` says what the list was built from: ``"history"`` (the user's
own events), ``"session"`` (``recent_items`` sent with an anonymous request), ``"popular"``
(nothing known about the user: most popular items), ``"similar"`` (``/similar-items``), or
``"search"`` (``/search`` by text match alone; ``"search+history"`` and ``"search+session"``
when blended with the user's taste); ``notes``, only when there are any, are what the
configured scorers added to the candidate's explanation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_serializer

#: The most items one answer may hold, whatever the config says: the ceiling of ``AppArgs.limits.max_k``,
#: which is the limit a server applies (1000 by default; a larger k is a 422 naming it).
MAX_K = 10_000
#: Longest user or item id, and the other string limits of the API (413 caps the whole body).
MAX_ID_LENGTH = 512
MAX_FILTER_KEYS = 32
MAX_FILTER_VALUES = 1000

_ID = Field(min_length=1, max_length=512)


def _storable(value: str) -> str:
    """Refuse text that cannot be stored as UTF-8 (JSON allows lone surrogates such as "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired surrogate (not valid Unicode text)") from None
    return value


def _unix_seconds(value: float | str | None) -> float | None:
    """An ISO-8601 string becomes unix seconds (the data files' rule: no zone means UTC)."""
    if not isinstance(value, str):
        return value
    from rayrec.data.columns import timestamp_from_text

    seconds = timestamp_from_text(value)
    if seconds is None:
        raise ValueError("must be unix seconds or an ISO-8601 time such as 2026-12-02T09:30:00Z")
    return float(seconds)


#: Every string a request carries: valid Unicode, so the state store can always write it.
Text = Annotated[str, AfterValidator(_storable)]
IdString = Annotated[Text, StringConstraints(max_length=MAX_ID_LENGTH)]
FilterKey = Annotated[Text, StringConstraints(min_length=1, max_length=128)]


#: Item metadata a /recommend or /search answer can carry per item (``include``).
ItemField = Literal["title", "text", "categories"]

#: Attribute filters: an item is kept if, for every key, one of its values is listed.
AttributeFilters = dict[FilterKey, Annotated[list[IdString], Field(max_length=MAX_FILTER_VALUES)] | IdString]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Text | None = Field(
        None, min_length=1, max_length=512,
        description="Any user id; unknown users get popular items. Leave it out for an anonymous session: "
                    "the answer then comes from recent_items alone (popular items without them).")
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return: at most the server's max_k (1000 unless configured).")
    exclude_items: list[IdString] = Field(default_factory=list, max_length=10_000, description="Never return these.")
    filters: AttributeFilters = Field(
        default_factory=dict,
        max_length=MAX_FILTER_KEYS,
        description='Attribute filters: an item is kept if, for every key, one of its values is listed, e.g. {"categories": ["Comedy"]}.',
    )
    recent_items: list[IdString] = Field(
        default_factory=list, max_length=1000, description="Items of the current session (oldest first), e.g. for anonymous users."
    )
    include: list[ItemField] = Field(
        default_factory=list, max_length=3,
        description='Item metadata to add to each returned item, e.g. ["title", "categories"], so a page needs '
                    "no GET /items/{id} per item.")
    scorer_options: dict[FilterKey, dict[FilterKey, Any]] = Field(
        default_factory=dict, max_length=MAX_FILTER_KEYS,
        description='Options of configured scorers for this request only, by scorer name, over the configured '
                    'ones, e.g. {"category_diversity": {"penalty": 0.5}}. Each is validated by the scorer\'s '
                    "Options: a name that is not configured, or a bad option, is a 422 naming it.")
    session_id: Text | None = Field(
        None, min_length=1, max_length=512,
        description="An anonymous session's id: assigns the session to an experiment arm when no user_id is given.")
    arm: Text | None = Field(
        None, min_length=1, max_length=64,
        description="Debugging: serve this arm of the running experiment instead of the assigned one.")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain some text, not only whitespace")
    return value


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: Annotated[Text, AfterValidator(_not_blank)] = Field(
        min_length=1, max_length=1000, description='What to look for, in plain words, e.g. "funny animated films for kids".')
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return: at most the server's max_k (1000 unless configured).")
    user_id: Text | None = Field(
        None, min_length=1, max_length=512,
        description="Personalise: blend text match with this user's taste (no effect for users without history).")
    exclude_items: list[IdString] = Field(default_factory=list, max_length=10_000, description="Never return these.")
    filters: AttributeFilters = Field(
        default_factory=dict, max_length=MAX_FILTER_KEYS, description="Attribute filters, as in /recommend.")
    include: list[ItemField] = Field(default_factory=list, max_length=3, description="Item metadata, as in /recommend.")

    def as_recommend_request(self) -> RecommendRequest:
        """What the preprocessor and user encoder need to personalise this search (needs ``user_id``)."""
        return RecommendRequest(user_id=self.user_id, k=self.k, exclude_items=self.exclude_items, filters=self.filters,
                                include=self.include)


def _drop_none(data: dict[str, Any], key: str) -> dict[str, Any]:
    """Answers leave out a field that only some configurations fill, instead of sending null."""
    if data.get(key, 0) is None:
        del data[key]
    return data


class Explanation(BaseModel):
    because: list[str] = Field(default_factory=list, description="History items that contributed most.")
    source: str = Field("history", description="history | session | popular | similar | search | search+history | search+session")
    notes: list[str] | None = Field(
        None, description='What the configured scorers noted about this item (Candidate.explanation), e.g. '
                          '["popularity +0.069"]; absent when they noted nothing.')

    @model_serializer(mode="wrap")
    def _without_empty_notes(self, handler):
        return _drop_none(handler(self), "notes")


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(
        description="The retrieval score: from the model (user vector x item vector) when explanation.source "
                    "is history or session; for popular, the item's popularity relative to the most popular "
                    "item, in (0, 1]. Items are listed best first: by this score, or in the order the "
                    "configured scorers chose.")
    rank_score: float | None = Field(
        None, description="With scorers configured: the score the last of them left (what they ranked by).")

    @model_serializer(mode="wrap")
    def _without_rank_score(self, handler):
        return _drop_none(handler(self), "rank_score")
    explanation: Explanation
    title: str | None = Field(None, description='With include: ["title"].')
    text: str | None = Field(None, description='With include: ["text"].')
    categories: list[str] | None = Field(None, description='With include: ["categories"].')


class RecommendResponse(BaseModel):
    user_id: str | None = Field(description="As sent; null for an anonymous session.")
    items: list[RecommendedItem]
    model_version: str
    impression_id: str | None = Field(
        None, description="While an experiment runs: this answer's id, to send back with /feedback events.")
    arm: str | None = Field(None, description="While an experiment runs: the arm that answered.")


RETRIEVAL_DESCRIPTION = ('"exact": every item scored; "hnsw": candidates from the HNSW index (catalogues above '
                         'retrieval.exact_search_max_items), re-scored exactly.')


class SearchResponse(BaseModel):
    query: str
    user_id: str | None = None
    items: list[RecommendedItem]
    model_version: str
    retrieval: Literal["exact", "hnsw"] = Field(description=RETRIEVAL_DESCRIPTION)


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[RecommendedItem]
    model_version: str
    retrieval: Literal["exact", "hnsw"] = Field(description=RETRIEVAL_DESCRIPTION)


class FeedbackEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Text = Field(min_length=1, max_length=512)
    item_id: Text = Field(min_length=1, max_length=512)
    event_type: Text = Field("click", min_length=1, max_length=64, description="One of the configured event weights.")
    timestamp: Annotated[float | str | None, AfterValidator(_unix_seconds)] = Field(
        None, description='Unix seconds, or an ISO-8601 time as in the data files ("2026-12-02T09:30:00Z"; UTC '
                          "without a zone); the time of arrival when absent.")
    value: float | None = None
    event_id: Text | None = Field(None, min_length=1, max_length=256, description="Re-sending the same id is a no-op.")
    impression_id: Text | None = Field(
        None, min_length=1, max_length=64,
        description="The impression_id of the /recommend answer that showed this item: attributes the event to "
                    "that answer's experiment arm and to the position the item was shown at.")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    events: list[FeedbackEventIn] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    accepted: int = Field(description="Events acknowledged (durable), re-sends included.")
    stored: int = Field(description="Events newly written.")
    duplicates: int = Field(description="Events whose event_id was already stored.")
    attributed: int | None = Field(
        None, description="Only when events carried an impression_id: those newly attributed to it.")

    @model_serializer(mode="wrap")
    def _without_attributed(self, handler):
        return _drop_none(handler(self), "attributed")


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    title: Text = Field("", max_length=2000)
    text: Text = Field("", max_length=100_000)
    categories: list[Annotated[Text, StringConstraints(max_length=256)]] = Field(default_factory=list, max_length=100)


class ItemChangeResponse(BaseModel):
    item_id: str
    catalog_version: int
    status: str


class ItemOut(BaseModel):
    """A live catalogue item's metadata (``GET /items/{item_id}``)."""

    item_id: str
    title: str = ""
    text: str = ""
    categories: list[str] = Field(default_factory=list)


class EraseResponse(BaseModel):
    user_id: str
    erased_events: int


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model_dir: Text = Field(
        min_length=1, max_length=4096, description="An absolute path to a model directory inside the configured model_roots."
    )


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    arm: Text = Field(min_length=1, max_length=64, description="The arm whose model becomes the only one served.")


class ExperimentReport(BaseModel):
    """An experiment, its arms (with the memory each costs) and its readout (``GET /experiments/{name}``)."""

    name: str
    status: str = Field(description="running, stopped or promoted.")
    control: str
    promoted_arm: str | None = None
    click_events: list[str]
    conversion_events: list[str]
    arms: list[dict[str, Any]] = Field(
        description="name, share, generation, model_dir, model_files_mb (the size of the arm's model files), "
                    "added_resident_mb and replicas (the resident memory that loading it added, summed over the "
                    "replicas that loaded it at the start; 0 for an arm on an already loaded model, null where "
                    "unmeasured) and shares_live_model (true: the live model's memory, no extra copy).")
    readout: list[dict[str, Any]] = Field(
        description="Per arm: impressions, clicks, conversions; ctr, conversion and reward as {value, ci}; "
                    "other arms also vs_control: each metric's {diff, ci, p_value} against the control.")


class ReloadResponse(BaseModel):
    model_version: str
    generation: int
    model_dir: str


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is, e.g. [\"body\", \"events\", 0, \"item_id\"].")
    msg: str
    type: str = ""


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx and 5xx)."""

    message: str = Field(description="What is wrong and where, in one line, e.g. 'k: at most 1000'.")
    detail: list[ErrorDetail] = Field(default_factory=list)


class HnswStatus(BaseModel):
    m: int = Field(description="Graph degree.")
    ef_search: int = Field(description="Search breadth: retrieval.ann.ef_search, else what export recorded, else "
                                       "scaled with the catalogue.")
    similar_items: bool = Field(description="Whether /similar-items asks the graph (false: the item vectors' lengths "
                                            "vary too much for an inner-product graph to find cosine neighbours).")


class ItemVectorsStatus(BaseModel):
    kind: str = Field(description="retrieval.vectors: float32, float16, int8 or pq.")
    bytes_per_item: float = Field(description="Bytes a scorer holds per trained item for search (float32: 4 x dim).")
    search: str = Field(description="'exact scan' (every item scored) or 'hnsw' (an ANN graph).")
    from_model_dir: bool = Field(description="Whether the HNSW graph or compressed codes were read from the model "
                                             "directory (false: built when the scorer started, or none needed).")
    hnsw: HnswStatus | None = Field(None, description="With an HNSW graph: its parameters; absent without one.")

    @model_serializer(mode="wrap")
    def _without_hnsw(self, handler):
        return _drop_none(handler(self), "hnsw")


class HealthResponse(BaseModel):
    status: str
    model_version: str
    search: bool = Field(False, description="Whether POST /search is enabled (a text model for queries is loaded).")
    item_vectors: ItemVectorsStatus | None = Field(None, description="How the scorer holds the item vectors.")


@dataclass
class PreparedRequest:
    """What the preprocessor hands to the encoder and the scorer."""

    user_id: str | None  # None: an anonymous session
    k: int
    generation: int
    history_ids: list[str] = field(default_factory=list)  # the sequence the user tower reads
    history_indices: list[int] = field(default_factory=list)  # the same, as model item indices
    seen: set[str] = field(default_factory=set)  # filtered out when filter_seen is on
    exclude: set[str] = field(default_factory=set)  # dislikes + explicit exclusions: always filtered
    filters: dict[str, Any] = field(default_factory=dict)
    source: str = "popular"  # history | session | popular
    user_features: Any = None  # output of user-side feature extractors, if any
    include: list[str] = field(default_factory=list)  # item metadata fields to add to the answer
    scorer_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # this request's, by scorer name
    arm: str | None = None  # the experiment arm answering, whose own re-rankers (if any) run

    @property
    def personalized(self) -> bool:
        return bool(self.history_indices)
