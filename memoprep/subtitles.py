"""Subtitles -> the lines a movie is cut into: read (.srt / .ass beside the movie, else the
longest embedded subtitle stream), decoded whatever the encoding, normalised, filtered, and
numbered from 1 in time order."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from memodb.errors import BadInputError

SUFFIXES = (".srt", ".ass", ".ssa", ".vtt")
MIN_DURATION_S = 1.0
_MARKUP = re.compile(r"\{[^}]*\}|<[^>]*>")
_NOT_KEPT = re.compile(r"[^A-Za-z0-9,.?!:;'\" ]")


@dataclass(frozen=True)
class Line:
    """One subtitle line kept as a segment: ``n`` counts every line of the subtitles from 1
    in time order (dropped lines keep their numbers)."""
    n: int
    start: float
    end: float
    text: str


def find_subtitle_file(movie: Path) -> Path | None:
    """The subtitle file beside a movie: ``<stem>.srt`` / ``.ass`` / ``.ssa`` / ``.vtt``."""
    for suffix in SUFFIXES:
        for cand in (movie.with_suffix(suffix), movie.with_suffix(suffix.upper())):
            if cand.is_file():
                return cand
    return None


def decode_text(data: bytes, path, encoding: str | None = None) -> str:
    """Subtitle bytes as text: the given encoding, else UTF-8 (with or without BOM), else the
    encoding charset-normalizer finds (GB2312 is read as its superset GBK)."""
    if encoding:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise BadInputError(f"cannot be read as {encoding} ({exc})", file=path,
                                fix="give the file's real encoding") from exc
    for enc in ("utf-8-sig",):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None or best.encoding is None:
        raise BadInputError("subtitle file in an unknown encoding (not UTF-8, and no other "
                            "encoding fits)", file=path,
                            fix="convert it to UTF-8 or give its encoding (--sub-encoding)")
    enc = "gbk" if best.encoding.lower() in ("gb2312", "gb18030") else best.encoding
    return data.decode(enc, errors="replace")


def normalize(text: str) -> str:
    """A line's text as the models see it: of a bilingual line (parts split by ``\\N``, some
    with non-ASCII letters, some without) only the parts without; markup removed; only ASCII
    letters, digits and ``,.?!:;'"`` kept; spaces collapsed."""
    parts = re.split(r"\\N|\\n|\n", _MARKUP.sub("", text))
    english = [p for p in parts if p.isascii() and p.strip()]
    if english and len(english) < len([p for p in parts if p.strip()]):
        parts = english  # a bilingual line: its ASCII part(s)
    out = _NOT_KEPT.sub("", " ".join(parts))
    return " ".join(out.split())


def read_subtitles(path, encoding: str | None = None) -> list[tuple[float, float, str]]:
    """(start s, end s, raw text) of every event of a subtitle file, in file order."""
    import pysubs2

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"unreadable subtitle file ({exc})", file=path) from exc
    text = decode_text(data, path, encoding)
    fmt = {".srt": "srt", ".ass": "ass", ".ssa": "ssa", ".vtt": "vtt"}.get(path.suffix.lower())
    try:
        subs = pysubs2.SSAFile.from_string(text, format_=fmt)
    except Exception as exc:  # noqa: BLE001 - pysubs2 raises several kinds on bad files
        raise BadInputError(f"not a subtitle file pysubs2 can parse ({type(exc).__name__}: "
                            f"{exc})", file=path, fix="check the file's format") from exc
    return [(ev.start / 1000, ev.end / 1000, ev.text) for ev in subs if not ev.is_comment]


def embedded_subtitles(movie: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, raw text) of the longest embedded text subtitle stream (the one whose
    events cover the most time), or [] when the movie has none."""
    import av

    with av.open(str(movie)) as container:
        streams = list(container.streams.subtitles)
        if not streams:
            return []
        events = {s.index: [] for s in streams}
        for packet in container.demux(streams):
            if packet.pts is None:
                continue
            tb = packet.stream.time_base
            start = float(packet.pts * tb)
            end = float((packet.pts + packet.duration) * tb) if packet.duration else None
            texts = []
            for sub in packet.decode():
                # PyAV < 14 yields subtitle sets of rects, later versions the rects
                rects = list(sub) if hasattr(sub, "rects") or hasattr(sub, "__iter__") else [sub]
                if end is None and getattr(sub, "end_display_time", 0):
                    end = start + sub.end_display_time / 1000
                texts += [t for t in (_rect_text(r) for r in rects) if t]
            if texts and end is not None:
                events[packet.stream.index].append((start, end, "\\N".join(texts)))
    return max(events.values(), key=lambda evs: sum(e - s for s, e, _ in evs))


def _rect_text(rect) -> str | None:
    """The text of a subtitle rect: its dialogue, or the text field of its ASS event line."""
    raw = getattr(rect, "dialogue", None) or getattr(rect, "ass", None) \
        or getattr(rect, "text", None)
    if not raw:
        return None
    raw = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if getattr(rect, "dialogue", None) is None and raw.count(",") >= 8:
        raw = raw.split(",", 8)[-1]
    return raw


def movie_lines(movie: Path, encoding: str | None = None) -> tuple[list[Line], dict, str]:
    """The kept lines of a movie, the count of lines each text filter dropped, and where the
    subtitles came from (a file name or ``embedded``). No subtitles at all is a BadInputError."""
    sub_file = find_subtitle_file(movie)
    if sub_file is not None:
        events, origin = read_subtitles(sub_file, encoding), sub_file.name
    else:
        try:
            events, origin = embedded_subtitles(movie), "embedded"
        except Exception as exc:  # noqa: BLE001 - PyAV raises its own error kinds
            raise BadInputError(f"unreadable movie ({type(exc).__name__}: {exc})", file=movie,
                                fix="check the file (ffprobe) or remove it") from exc
        if not events:
            raise BadInputError("no subtitles: no .srt / .ass beside the movie and no embedded "
                                "text subtitle stream", file=movie,
                                fix=f"put the subtitles in {movie.with_suffix('.srt').name}")
    return filter_lines(events) + (origin,)


def filter_lines(events) -> tuple[list[Line], dict]:
    """Sort events by start and number them from 1 (the segment numbers), normalise their
    text, and drop empty texts and lines under 1 s (counted per filter)."""
    dropped = {"empty_text": 0, "under_1s": 0}
    kept = []
    for n, (start, end, raw) in enumerate(sorted(events, key=lambda e: (e[0], e[1])), 1):
        text = normalize(raw)
        if not text:
            dropped["empty_text"] += 1
        elif end - start < MIN_DURATION_S:
            dropped["under_1s"] += 1
        else:
            kept.append(Line(n, start, end, text))
    return kept, dropped
