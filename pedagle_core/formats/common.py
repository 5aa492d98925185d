"""Pieces both formats share: tensor-name normalisation, the config assembly, the read result."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, DrafterConfig
from .errors import CheckpointError
from .safetensors_io import TensorRecord

_HIDDEN_NORM = re.compile(r"^layers\.(\d+)\.hidden_norm\.weight$")
# Stored tensors that are not drafter weights and are dropped without a warning.
IGNORED = {"t2d", "verifier_lm_head.weight", "verifier_norm.weight"}


@dataclass
class ReadResult:
    """What a format reader extracts from a checkpoint directory (no tensor data yet)."""

    path: Path
    format: str
    config_file: Path
    config: DrafterConfig
    tensors: dict[str, TensorRecord]             # canonical name -> stored record
    ignored: list[str] = field(default_factory=list)
    mask_token_source: str | None = None         # the config key the mask token came from
    parallel_depth_recorded: bool = False
    verifier_name_or_path: str | None = None
    verifier_architectures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def origin(self, name: str) -> str:
        rec = self.tensors[name]
        return f"{rec.file}: tensor '{rec.name}'"


def canonical_names(stored: dict[str, TensorRecord], where: str) -> tuple[dict[str, TensorRecord], list[str]]:
    """Stored names -> canonical (`Drafter` state_dict) names.

    ``model.`` prefixes are stripped and ``midlayer.`` is layer 0 (published EAGLE-3 heads); vLLM creates a
    ``hidden_norm`` in every layer but uses only layer 0's, so later ones are dropped, as are ``t2d`` and
    speculators' frozen verifier copies.
    """
    out: dict[str, TensorRecord] = {}
    ignored: list[str] = []
    for raw, rec in stored.items():
        name = raw[len("model."):] if raw.startswith("model.") else raw
        if name.startswith("midlayer."):
            name = "layers.0." + name[len("midlayer."):]
        m = _HIDDEN_NORM.match(name)
        if name in IGNORED or name.endswith("rotary_emb.inv_freq") or (m and int(m.group(1)) > 0):
            ignored.append(raw)
            continue
        if name in out:
            raise CheckpointError(f"{rec.file}: tensors '{out[name].name}' and '{raw}' both name the drafter "
                                  f"weight '{name}'; expected one of them")
        out[name] = rec
    return out, ignored


def as_int(v: Any, where: str, key: str, allow_none: bool = True) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"{where}: field '{key}' = {v!r}; expected an integer")
    return v


def as_id_list(v: Any, where: str, key: str) -> list[int] | None:
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise CheckpointError(f"{where}: field '{key}' = {v!r}; expected a list of target layer ids (integers)")
    return list(v)


def build_config(kw: dict[str, Any], where: str, mask_key: str | None,
                 stored: dict[str, TensorRecord]) -> DrafterConfig:
    """DrafterConfig from reader keywords, with the range checks phrased in the file's own field names."""
    vocab, draft_vocab = kw["vocab_size"], kw.get("draft_vocab_size") or kw["vocab_size"]
    if draft_vocab > vocab:
        raise CheckpointError(f"{where}: field 'draft_vocab_size' = {draft_vocab} is larger than the target "
                              f"vocabulary; expected <= vocab_size = {vocab}")
    m = kw.get("mask_token_id")
    if m is not None and not 0 <= m < vocab:
        raise CheckpointError(f"{where}: field '{mask_key}' = {m} is outside the vocabulary; expected a token id "
                              f"in [0, {vocab}) (vocab_size = {vocab})")
    if stored:            # without weight files (read_config of a bare config) keep the defaults
        kw = dict(kw, has_embed_tokens="embed_tokens.weight" in stored, has_lm_head="lm_head.weight" in stored)
    try:
        return DrafterConfig(**kw)
    except ConfigError as e:
        msg = str(e)
        raise CheckpointError(where + msg[len("config"):] if msg.startswith("config:") else f"{where}: {msg}") from e
