"""The configuration's sections as data: a section is a dataclass whose fields carry their
documentation and tags in the field metadata (:func:`setting`), defined beside the code it
configures and checked by its own ``check()``.

:class:`unigrad.config.Config` is the flat record made of every section's fields (so
``--set key=value`` and flat YAML keep working); key lists that used to be kept by hand are
queries of the tags (:func:`unigrad.config.keys_tagged`):

* ``arch``: must match for ``--resume`` to continue a run (architecture, method, batch, seed);
* ``baseline``: what a random-init baseline depends on (one per value, in ``compare``);
* ``untrained``: not a setting the run learns from (paths, logging, speed), left out when a
  grid compares a finished run with what it asks now.

Only dataclasses and metadata here: no module of the library is imported.
"""

from dataclasses import field
from typing import Any

TAGS = ("arch", "baseline", "untrained", "schedule")


def setting(default: Any, doc: str = "", *tags: str) -> Any:
    """A config field with an immutable default, its documentation and tags (:data:`TAGS`)."""
    unknown = set(tags) - set(TAGS)
    if unknown:
        raise ValueError(f"unknown tags {sorted(unknown)}; choose from {TAGS}")
    return field(default=default, metadata={"doc": doc, "tags": frozenset(tags)})


class Section:
    """Mixin of a section dataclass: ``check()`` raises a one-line UserError naming the key."""

    name = ""

    def check(self) -> None:  # pragma: no cover - every section overrides it
        raise NotImplementedError
