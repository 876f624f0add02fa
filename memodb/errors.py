"""Named errors. Every message says what is wrong, where (file, segment) and how to fix it."""
from __future__ import annotations

from contextlib import contextmanager


class MemoError(Exception):
    """Base class of every error memo raises on purpose."""


def cli_flag(option: str) -> str:
    """The command-line flag of a builder option: ``min_bb`` -> ``--min-bb``."""
    return "--" + option.replace("_", "-")


class BadInputError(MemoError):
    """An input file or segment cannot be used as it is.

    ``options``: the builder options (keyword names, e.g. ``min_bb``) the message names; they
    are written ``{min_bb}`` in ``problem`` and ``fix`` and shown as command-line flags
    (``--min-bb``), unless :meth:`naming_options` names them otherwise (``memo db build``: the
    config file and key)."""

    def __init__(self, problem: str, *, file=None, segment=None, fix: str | None = None,
                 options=()):
        self.options = tuple(options)
        self.templates = (problem, fix)
        shown = {o: cli_flag(o) for o in self.options}
        problem, fix = _fill(problem, shown), _fill(fix, shown)
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

    def naming_options(self, names: dict, config=None) -> "BadInputError":
        """The same error with its options shown as ``names[option]`` (config keys); without a
        file of its own, the error names ``config`` (the file the keys are in), otherwise each
        key says it is in ``config``."""
        if not self.options:
            return self
        suffix = f" in {config}" if config is not None and self.file is not None else ""
        shown = {o: (names[o] + suffix if o in names else cli_flag(o)) for o in self.options}
        problem, fix = self.templates
        return BadInputError(_fill(problem, shown), file=self.file if self.file is not None
                             else config, segment=self.segment, fix=_fill(fix, shown))

    def __reduce__(self):  # keep file / segment / fix / options across process boundaries
        return (_bad_input, (*self.templates, self.file, self.segment, self.options))


def _fill(text, shown: dict):
    """``{option}`` in ``text`` replaced by its shown name (only the options given: the rest
    of the text, values included, is left as it is)."""
    if text is None:
        return None
    for option, name in shown.items():
        text = text.replace("{" + option + "}", name)
    return text


def _bad_input(problem, fix, file, segment, options):
    return BadInputError(problem, file=file, segment=segment, fix=fix, options=options)


class BadInputsError(MemoError):
    """Several segments were bad; nothing was published. Holds every BadInputError."""

    def __init__(self, errors: list[BadInputError], what: str):
        self.errors, self.what = errors, what
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(
            f"{len(errors)} bad segment(s); {what} was not written:\n  {shown}{more}"
        )

    def naming_options(self, names: dict, config=None) -> "BadInputsError":
        """Every error with its options named by ``names`` (see BadInputError)."""
        errors = [e.naming_options(names, config) for e in self.errors]
        if all(new is old for new, old in zip(errors, self.errors)):
            return self
        return BadInputsError(errors, self.what)

    def __reduce__(self):
        return (BadInputsError, (self.errors, self.what))


@contextmanager
def named_options(names: dict, config=None):
    """``with named_options(names, config):`` re-raises the BadInputError(s) raised inside
    with their options shown as ``names[option]`` (config keys) in ``config`` (a dataset
    config file; None for a config given as a dict)."""
    try:
        yield
    except (BadInputError, BadInputsError) as exc:
        renamed = exc.naming_options(names, config)
        if renamed is exc:
            raise
        raise renamed from None


class OutputExistsError(MemoError):
    """The output path already holds something memo must not overwrite."""


class DatabaseError(MemoError):
    """A database cannot be opened or one of its values cannot be read."""
