"""Held-out prompts of a bundled model directory (``heldout_prompts.jsonl`` beside ``tokenizer.json``, as the
tiny-code target has them), tokenised and cut to chosen lengths: prompts of different lengths for engine runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def heldout_prompts(target: str | Path, lengths: Sequence[int], start: int = 0) -> list[list[int]]:
    """Prompt i = held-out line ``start + i`` (cycling) tokenised with ``target``'s tokenizer.json, repeated when
    shorter than ``lengths[i]`` and cut to it."""
    from tokenizers import Tokenizer

    target = Path(target)
    src = target / "heldout_prompts.jsonl"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no held-out prompts (a JSON line per prompt with field 'prompt')")
    lines = [json.loads(x)["prompt"] for x in src.read_text().splitlines() if x.strip()]
    tok = Tokenizer.from_file(str(target / "tokenizer.json"))
    out = []
    for i, n in enumerate(lengths):
        ids = tok.encode(lines[(start + i) % len(lines)]).ids
        if not ids:
            raise ValueError(f"{src}: line {(start + i) % len(lines)} tokenises to nothing")
        while len(ids) < n:
            ids = ids + ids
        out.append(ids[:n])
    return out
