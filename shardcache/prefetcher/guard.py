"""The source must stay what was listed: a prefetch's checks of its files against the listing.

A version id stands for the files as they were listed. Each file is checked when the run
first reads it, and every listed file once more before the commit, so that a file rewritten
meanwhile never commits its old rows beside its new ones.
"""

from __future__ import annotations

from ..cache.manifest import Manifest
from ..source.filesystem import list_files
from ..source.identity import changed_error, what_changed
from .job import Source

__all__ = ["NOT_COMMITTED", "ListingGuard"]

NOT_COMMITTED = (
    "the version is not committed (it stays 'loading'): run the prefetch again once the source stops "
    "changing; it makes a new version from the files as they are then"
)


class ListingGuard:
    """The files of one run's listing, and which of them were found unchanged when first read."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self._listed = {src.uri_of(f.path): f for f in src.files}
        self._checked: set[str] = set()  # files found unchanged when this run first read them

    def check_shard(self, manifest: Manifest, index: int, *, again: bool = False) -> None:
        """Raise SourceError if a file of shard ``index`` differs from the listing (each file is
        checked when first read; ``again`` checks them all once more, after a failed read)."""
        for segment in manifest.shards[index].source:
            entry = self._listed.get(segment.uri)
            if entry is None or (segment.uri in self._checked and not again):
                continue
            how = what_changed(self.src.fs, entry.path, size=entry.size, mtime_ns=entry.mtime_ns)
            if how is not None:
                raise changed_error([(segment.uri, how)], dataset=manifest.name, version=manifest.version,
                                    shard=index, fix=NOT_COMMITTED)
            self._checked.add(segment.uri)

    def check_listing(self, manifest: Manifest) -> None:
        """Raise SourceError unless every listed file still has its listed size and mtime: a file
        replaced after it was read would otherwise commit its old rows beside its new ones."""
        now = {e.path: e for e in list_files(self.src.fs, self.src.root, uri=self.src.uri)}
        changes = []
        for uri, entry in self._listed.items():
            current = now.get(entry.path)
            if current is None:
                changes.append((uri, "is gone"))
            elif (current.size, current.mtime_ns) != (entry.size, entry.mtime_ns):
                how = what_changed(self.src.fs, entry.path, size=entry.size, mtime_ns=entry.mtime_ns)
                changes.append((uri, how or "was rewritten"))
        if changes:
            raise changed_error(changes, dataset=manifest.name, version=manifest.version, shard=None,
                                fix=NOT_COMMITTED)
