"""A rayrec scorer that nudges candidates towards popular and recently active items.

Installed, it is found through the ``rayrec`` entry point in ``pyproject.toml``; the only
thing rayrec needs from this module is the ``@hookimpl`` function at the bottom.
"""

from __future__ import annotations

import math
import time

from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import Candidate, Scorer, ScoringContext
from rayrec.hookspecs import hookimpl

__version__ = "0.1.0"

SECONDS_PER_HOUR = 3600.0


class PopularityBlend(Scorer):
    """Adds ``weight * log(1 + popularity)`` and an optional recency boost to each score.

    ``blended = score + weight * log1p(popularity) + recency_weight * 0.5 ** (age / half_life)``

    where popularity is the item's training interaction count (``context.item_popularity``)
    and age is ``context.now`` minus the item's last-seen time (``context.item_timestamps``).
    The log keeps a blockbuster from drowning out relevance: 1,000 interactions count only
    about three times as much as 10. Items missing from either mapping get no boost.
    """

    name = "popularity_blend"
    description = "Blend the score with log-popularity and an optional recency boost."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        weight: float = Field(
            0.1, ge=0, description="Score added per unit of log(1 + interactions); 0 disables the blend."
        )
        recency_weight: float = Field(
            0.0, ge=0, description="Boost for an item seen right now; halves every half_life_hours. 0 disables it."
        )
        half_life_hours: float = Field(
            24.0 * 7, gt=0, description="Hours after an item's last interaction at which its recency boost halves."
        )

    def rerank(self, candidates: list[Candidate], context: ScoringContext) -> list[Candidate]:
        """The candidates sorted by blended score, best first, with the boosts noted in ``explanation``.

        rayrec keeps the returned order; answers show the blended score as ``rank_score`` and
        the notes as ``explanation.notes``, and keep the model's score as ``score``.
        """
        options = self.options
        # Without an explicit clock, serving time is "now"; tests pass context.now.
        now = context.now if context.now is not None else time.time()
        half_life_seconds = options.half_life_hours * SECONDS_PER_HOUR
        rescored = []
        for candidate in candidates:
            popularity = max(context.item_popularity.get(candidate.item_id, 0.0), 0.0)
            popularity_boost = options.weight * math.log1p(popularity)
            recency_boost = 0.0
            last_seen = context.item_timestamps.get(candidate.item_id)
            if options.recency_weight > 0 and last_seen is not None:
                age_seconds = max(now - last_seen, 0.0)  # clock skew must not boost above 1
                recency_boost = options.recency_weight * 0.5 ** (age_seconds / half_life_seconds)
            explanation = list(candidate.explanation)
            if popularity_boost:
                explanation.append(f"popularity +{popularity_boost:.3f}")
            if recency_boost:
                explanation.append(f"recency +{recency_boost:.3f}")
            blended = candidate.score + popularity_boost + recency_boost
            rescored.append(candidate.model_copy(update={"score": blended, "explanation": explanation}))
        return sorted(rescored, key=lambda c: -c.score)


@hookimpl
def register_scorers(register):
    register(PopularityBlend)
