"""Bookkeeping for malformed rows: skip and count them, or stop when there are too many.

A few bad lines in a large log are normal (a truncated last line, a stray header), so by
default they are skipped and reported. When many rows are bad the file is most likely in the
wrong format, and silently training on the remaining rows would hide that, so loading stops.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from rayrec.errors import DataError
from rayrec.schema import LoadReport

#: Above this fraction of malformed rows a file is rejected rather than partly loaded.
DEFAULT_MAX_MALFORMED_FRACTION = 0.1
#: How many "file:line: reason" examples are kept for reports and error messages.
MAX_EXAMPLES = 5


class MalformedRows:
    """Counts the malformed rows of one file and keeps the first few (by line) as examples."""

    def __init__(
        self,
        path: str | Path,
        *,
        strict: bool = False,
        max_fraction: float = DEFAULT_MAX_MALFORMED_FRACTION,
    ) -> None:
        self.path = str(path)
        self.strict = strict
        self.max_fraction = max_fraction
        self.count = 0
        # (line, reason), sorted by line; rows are found in more than one pass (structure
        # while reading, values afterwards), so keep the smallest lines, not the first found.
        self._first: list[tuple[int, str]] = []

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self._first) < MAX_EXAMPLES or line < self._first[-1][0]:
            bisect.insort(self._first, (int(line), reason))
            del self._first[MAX_EXAMPLES:]

    @property
    def examples(self) -> list[str]:
        """The first malformed rows as ``"path:line: reason"``."""
        return [f"{self.path}:{line}: {reason}" for line, reason in self._first]

    def check(self, rows_read: int) -> None:
        """Raise :class:`DataError` if strict and any row was bad, or if too many were."""
        if not self.count:
            return
        too_many = self.count > self.max_fraction * max(rows_read, 1)
        if not (self.strict or too_many):
            return
        if self.strict:
            why = "strict loading allows no malformed rows"
        else:
            why = (
                f"more than {self.max_fraction:.0%} of the rows, so the file is probably not in "
                "the expected format"
            )
        examples = "\n".join(f"  {example}" for example in self.examples)
        raise DataError(
            f"{self.count:,} of {rows_read:,} rows are malformed ({why}); first examples:\n{examples}",
            path=self.path,
        )

    def record_into(self, report: LoadReport) -> None:
        """Add this file's count and examples to ``report`` (keeping at most 5 examples)."""
        report.malformed_rows += self.count
        room = MAX_EXAMPLES - len(report.malformed_examples)
        if room > 0:
            report.malformed_examples.extend(self.examples[:room])
