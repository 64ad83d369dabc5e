"""Shared tail of the benchmark scripts: print the markdown table and optionally write it to a file."""

from __future__ import annotations

import os
from typing import Optional


def emit_table(table: str, path: Optional[str]) -> None:
    print()
    print(table)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(table)
