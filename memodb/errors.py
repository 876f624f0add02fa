"""Named errors. Every message says what is wrong, where (file, segment) and how to fix it."""
from __future__ import annotations


class MemoError(Exception):
    """Base class of every error memo raises on purpose."""


class BadInputError(MemoError):
    """An input file or segment cannot be used as it is."""

    def __init__(self, problem: str, *, file=None, segment=None, fix: str | None = None):
        self.problem, self.file, self.segment, self.fix = problem, file, segment, fix
        where = []
        if file is not None:
            where.append(str(file))
        if segment is not None:
            where.append(f"segment {segment!r}")
        text = (": ".join(where) + ": " if where else "") + problem
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)

    def __reduce__(self):  # keep file / segment / fix across process boundaries
        return (_bad_input, (self.problem, self.file, self.segment, self.fix))


def _bad_input(problem, file, segment, fix):
    return BadInputError(problem, file=file, segment=segment, fix=fix)


class BadInputsError(MemoError):
    """Several segments were bad; nothing was published. Holds every BadInputError."""

    def __init__(self, errors: list[BadInputError], what: str):
        self.errors = errors
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(
            f"{len(errors)} bad segment(s); {what} was not written:\n  {shown}{more}"
        )


class OutputExistsError(MemoError):
    """The output path already holds something memo must not overwrite."""


class DatabaseError(MemoError):
    """A database cannot be opened or one of its values cannot be read."""
