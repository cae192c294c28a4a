"""Built-in candidate sources, registered through ``register_candidate_sources``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import Candidate, CandidateSource, ScoringContext
from rayrec.hookspecs import hookimpl


class NewItems(CandidateSource):
    """Items added after training (through ``PUT /items``), newest first.

    Their content vectors can be far from a user's vector even when relevant, so exact search
    over a large catalogue or an ANN index may not surface them; this source makes sure they
    are always considered, and the model's score decides where they land.
    """

    name = "new_items"
    description = "Items added after training (PUT /items), so cold-start items always get considered."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_items: int = Field(200, ge=0, description="Propose at most this many of the newest items.")

    def candidates(self, context: ScoringContext, k: int) -> list[Candidate]:
        catalog = context.catalog
        if catalog is None:
            return []
        new = catalog.added_items  # oldest first; an update moves nothing
        limit = min(k, self.options.max_items)
        return [Candidate(item_id=item_id, score=0.0) for item_id in reversed(new[-limit:])] if limit else []


@hookimpl
def register_candidate_sources(register):
    register(NewItems)
