"""Text in and out: annotation files read as UTF-8, with or without the byte-order mark that
spreadsheets (Excel's "CSV UTF-8") and Windows editors write at the start; counts written with
their noun's number."""

from __future__ import annotations

from pathlib import Path


def read_text(path: str | Path) -> str:
    """The text of ``path`` without a byte-order mark; a file that is not UTF-8 (Latin-1, a
    Windows code page) is an error naming it and the fix."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None


def counted(number: int, one: str, many: str = "") -> str:
    """``1 video``, ``2 videos``; ``many`` where the plural is not ``one`` + s."""
    return f"{number} {one if number == 1 else many or one + 's'}"
