"""The small LFM2 model shipped inside the package (recipe and model card: training/README.md),
so that `lfm2q run` works before a user has downloaded anything."""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
BUILTIN_TYPES = ("q4_k_m", "q8_0")


def builtin_model_path(kind: str = "q4_k_m") -> Path | None:
    """The shipped GGUF of type `kind` (q4_k_m or q8_0), or None when this install has none."""
    path = DATA / f"lfm2q-tiny-{kind}.gguf"
    return path if path.is_file() else None
