"""Files written so that a kill at any moment leaves the old version or the new one, never a torn file:
write a temporary file beside the target, flush it to disk, then rename it over the target (atomic on
POSIX file systems). Every report, record, metrics and state file goes through here."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # unique: writers never collide
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # e.g. a full disk: the target keeps its old content
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def finite(value: Any) -> Any:
    """NaN/inf become null: strict JSON readers (and Tune's result parsing) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(finite(payload), indent=2))


def read_json_lines(path: Path) -> list[Any]:
    """An append-only JSON-lines log ([] if absent). A line torn by a kill in the middle of an append is
    skipped; `append_json_line` starts a fresh line after one, so the next record is never glued to it."""
    rows = []
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_json_line(path: Path, row: Any) -> None:
    path = Path(path)
    with open(path, "a+b") as handle:  # writes append; the read below only looks at the last byte
        torn = False
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        handle.write((b"\n" if torn else b"") + json.dumps(row).encode() + b"\n")
        handle.flush()
