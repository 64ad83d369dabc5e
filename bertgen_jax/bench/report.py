"""Shared tail of the benchmarks: print the markdown table and optionally write it to a file."""

from __future__ import annotations

import os
from typing import Optional

from converters.files import atomic_write_text


def emit_table(table: str, path: Optional[str]) -> None:
    print()
    print(table)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_text(path, table)
