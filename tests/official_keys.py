"""The official PyTorch checkpoints' parameter names and shapes, kept in ``tests/official_checkpoint_keys``.

One ``<model>.keys.txt`` per published model, one ``key<TAB>[shape]`` line per tensor, in the order of
the official state dicts. They are facts about the published files, kept with the tests so that the
suite runs anywhere.
"""

from __future__ import annotations

from pathlib import Path

OFFICIAL_KEYS_DIR = Path(__file__).resolve().parent / "official_checkpoint_keys"


def official_key_rows(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of the published model ``name``, in state-dict order."""
    rows = []
    for line in (OFFICIAL_KEYS_DIR / f"{name}.keys.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, tuple(int(v) for v in shape.strip("[] ").split(",") if v.strip())))
    return rows


def official_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor of the published model ``name``."""
    return dict(official_key_rows(name))
