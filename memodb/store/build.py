"""The one build protocol every database goes through: an identical finished build there? ->
stage -> write the values -> manifest -> publish -> result.

:class:`Build` is one database to build at ``final``: on creation it looks for an identical
finished build (same kind, options and source fingerprint; :func:`~.writer.existing_build`);
:meth:`Build.run` either returns that one (``skipped``) or stages a new one, lets ``write``
put the values, and publishes it with a manifest that always records the kind, memo version,
options and source the next build compares. :meth:`Build.stage` and :meth:`Build.publish`
are the two halves of ``run``, for a caller that writes several databases at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from .. import __version__
from .writer import StagedDatabase, existing_build


@dataclass
class BuildResult:
    path: Path  # the database directory
    nbb_path: Path | None
    manifest: dict
    skipped: bool = False  # an identical build was already there

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]


class Written(NamedTuple):
    """What ``write`` returns: the manifest's own fields (beyond kind, memo_version, options,
    source) and the JSON files (name -> object or JSON text) beside the database (a copy
    inside; the nbb json) and inside it only (a text database's side files)."""

    manifest: dict
    side_files: dict | None = None
    inner_files: dict | None = None


class Build:
    """One database build at ``final`` (see the module docstring).

    ``replace``: a different memo database at ``final`` is replaced once the new one is
    complete (else refused with OutputExistsError). ``keys_entry``: write the ``__keys__`` list
    (feature databases). ``nbb_file``: the side file the result names.
    """

    def __init__(self, final, kind: str, options: dict, source: dict, *, replace: bool = False,
                 keys_entry: bool = True, nbb_file: str | None = None):
        self.final = Path(final)
        self.kind, self.options, self.source = kind, options, source
        self.replace, self.keys_entry = replace, keys_entry
        self.nbb_path = self.final.parent / nbb_file if nbb_file else None
        self.existing = existing_build(self.final, kind, options, source, replace)

    def up_to_date(self) -> BuildResult | None:
        """The identical finished build's result, or None when a build is needed (for a
        caller that prepares its values only then)."""
        if self.existing is None:
            return None
        return BuildResult(self.final, self.nbb_path, self.existing, skipped=True)

    def run(self, write: Callable[[StagedDatabase], Written]) -> BuildResult:
        """The existing build, or a new one whose values ``write(db)`` puts."""
        done = self.up_to_date()
        if done is not None:
            return done
        with self.stage() as db:
            return self.publish(db, write(db))

    def stage(self) -> StagedDatabase:
        """The staged database to write into (a context manager: nothing is published when
        its block raises)."""
        return StagedDatabase(self.final.parent, self.final.name, keys_entry=self.keys_entry,
                              replace=self.replace)

    def publish(self, db: StagedDatabase, written: Written) -> BuildResult:
        """Write the files and the manifest into ``db`` and publish it under ``final``."""
        manifest = {"kind": self.kind, "memo_version": __version__, "options": self.options,
                    "source": self.source, **written.manifest}
        path, manifest = db.finish(manifest, written.side_files, written.inner_files)
        return BuildResult(path, self.nbb_path, manifest)
