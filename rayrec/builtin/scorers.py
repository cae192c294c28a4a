"""Built-in re-rankers applied after embedding retrieval."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import Candidate, Scorer, ScoringContext
from rayrec.hookspecs import hookimpl


class CategoryDiversity(Scorer):
    """Penalise each further item of an already-represented category (greedy re-rank)."""

    name = "category_diversity"
    description = "Greedy re-rank that penalises repeated categories in the list."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        penalty: float = Field(0.1, ge=0, description="Score subtracted per earlier item sharing a category.")

    def rerank(self, candidates: list[Candidate], context: ScoringContext) -> list[Candidate]:
        """Greedy: each next item is the best by ``score`` minus the penalty for its categories
        already shown; its penalised score is what a later scorer sees."""
        remaining = sorted(candidates, key=lambda c: -c.score)
        seen: Counter[str] = Counter()
        ranked: list[Candidate] = []
        while remaining:
            def adjusted(c: Candidate) -> float:
                cats = context.item_categories.get(c.item_id, [])
                return c.score - self.options.penalty * sum(seen[cat] for cat in cats)

            best = max(remaining, key=adjusted)
            remaining.remove(best)
            ranked.append(best.model_copy(update={"score": adjusted(best)}))
            seen.update(context.item_categories.get(best.item_id, []))
        return ranked


@hookimpl
def register_scorers(register):
    register(CategoryDiversity)
