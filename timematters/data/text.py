"""Reading annotation files: UTF-8 text, with or without the byte-order mark that spreadsheets
(Excel's "CSV UTF-8") and Windows editors write at the start."""

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
