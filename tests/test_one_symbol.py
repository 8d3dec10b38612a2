"""One name per thing: a strategy's (asset's) identifier is ``symbol`` everywhere, never ``strategy_id``.

The contract (``proto/stratopt/v1/*.proto`` and the code generated from it), the engine (``services/``), both
sides (``command_side/``, ``query_side/``), the CLI (``stratopt_cli/``), the benchmarks and the examples name the
identifier ``symbol`` (``symbols`` for several). ``strategy_id`` survives only where old data is converted: the
migrations (``migrations/``, not scanned here) and the version history of ``docs/storage_schema.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("services", "command_side", "query_side", "stratopt_cli", "benchmarks")
OLD_NAME = re.compile(r"strategy_ids?|strategyIds?", re.IGNORECASE)


def _sources() -> list[Path]:
    paths = [path for folder in SCANNED for path in (ROOT / folder).rglob("*.py")]
    paths += (ROOT / "proto").rglob("*.proto")
    paths += (ROOT / "proto" / "stratopt" / "v1").glob("*.py*")  # the generated code (.py and .pyi)
    paths += (ROOT / "examples").glob("*.json")
    return sorted(paths)


def test_the_sources_scanned_are_there() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in _sources()}
    assert {"services/api.py", "proto/stratopt/v1/types.proto", "proto/stratopt/v1/types_pb2.pyi"} <= names
    assert all(any(name.startswith(f"{folder}/") for name in names) for folder in SCANNED)


def test_no_source_names_the_identifier_strategy_id() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OLD_NAME.search(line)
    ]
    assert offenders == []


def test_the_stored_schema_names_the_old_key_only_in_its_version_history() -> None:
    text = (ROOT / "docs" / "storage_schema.md").read_text(encoding="utf-8")
    history = text.index("## `schema_version` history")
    assert not OLD_NAME.search(text[:history])
