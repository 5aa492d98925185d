"""The vLLM / published-head format (pedagle's canonical on-disk format).

A plain Llama/Qwen3 ``config.json`` plus EAGLE-3 keys, served by stock vLLM (>= 0.16) with
``--speculative-config '{"method": "eagle3", "model": DIR, "num_speculative_tokens": K,
"parallel_drafting": true}'``.

Read: ``model_type`` llama/qwen3, the transformers layer fields, ``draft_vocab_size``,
``target_hidden_size``, the aux layer count and ids (top level and ``eagle_config``), the mask token
in vLLM's precedence (``dflash_config.mask_token_id`` -> ``mask_token_id`` -> ``dspark_noise_token_id``
-> ``pard_token`` -> ``ptd_token_id``), the norm flags, and pedagle's own ``pedagle.parallel_depth``
(vLLM ignores unknown keys). Weights ``layers.{i}.*`` or ``midlayer.*``, optionally ``model.``-prefixed.

Written: ``architectures: [LlamaForCausalLM | Qwen3ForCausalLM]`` (vLLM renames it Eagle3...),
``mask_token_id`` and ``ptd_token_id`` (same value), layer ids top level and in ``eagle_config`` plus
``num_aux_hidden_states`` so that every vLLM reader agrees, weights ``layers.{i}.*``, ``mask_hidden``
``[1, 1, n]``, ``d2t`` (+ ``t2d``) only with a reduced draft vocabulary, embed/lm_head only when the
drafter has its own.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import DrafterConfig
from .common import ReadResult, as_id_list, as_int, build_config, canonical_names
from .errors import CheckpointError
from .hf_config import _bool, _int, read_layer_config, write_layer_config
from .safetensors_io import TensorRecord

FORMAT = "vllm"
PEDAGLE_KEY = "pedagle"
FORMAT_VERSION = 1
# vLLM's order (v1/spec_decode/llm_base_proposer.py): the first key that is set wins.
MASK_TOKEN_KEYS = ("dflash_config.mask_token_id", "mask_token_id", "dspark_noise_token_id", "pard_token",
                   "ptd_token_id")


def looks_like(raw: dict) -> bool:
    """A Llama/Qwen3 config with EAGLE-3 markers (the weights decide when there are none)."""
    return raw.get("model_type") in ("llama", "qwen3") or any(
        "Llama" in a or "Qwen3" in a or "PEagle" in a for a in raw.get("architectures") or [])


def has_eagle_markers(raw: dict) -> bool:
    keys = ("draft_vocab_size", "eagle_config", "target_hidden_size", "num_aux_hidden_states",
            "eagle_aux_hidden_state_layer_ids", PEDAGLE_KEY, *MASK_TOKEN_KEYS[1:])
    return any(k in raw for k in keys) or any("Eagle" in a for a in raw.get("architectures") or [])


def _mask_token(raw: dict, where: str) -> tuple[int | None, str | None]:
    found: list[tuple[str, int]] = []
    dflash = raw.get("dflash_config") or {}
    if isinstance(dflash, dict) and dflash.get("mask_token_id") is not None:
        key = "dflash_config.mask_token_id"
        found.append((key, as_int(dflash["mask_token_id"], where, key)))
    for key in MASK_TOKEN_KEYS[1:]:
        if raw.get(key) is not None:
            found.append((key, as_int(raw[key], where, key)))
    if not found:
        return None, None
    key, value = found[0]
    others = [f"{k} = {v}" for k, v in found[1:] if v != value]
    if others:
        warnings.warn(f"{where}: '{key}' = {value} disagrees with {', '.join(others)}; using '{key}' as vLLM does",
                      stacklevel=4)
    return value, key


def read(path: Path, raw: dict, config_file: Path, stored: dict[str, TensorRecord]) -> ReadResult:
    where = str(config_file)
    kw = read_layer_config(raw, where)
    if raw.get("logit_scale") not in (None, 1, 1.0):
        raise CheckpointError(f"{where}: field 'logit_scale' = {raw['logit_scale']!r}; expected 1.0 (pedagle has no "
                              "logit scaling)")
    eagle = raw.get("eagle_config") or {}
    if not isinstance(eagle, dict):
        raise CheckpointError(f"{where}: field 'eagle_config' = {eagle!r}; expected an object")
    if eagle.get("use_aux_hidden_state", True) is False:
        raise CheckpointError(f"{where}: field 'eagle_config.use_aux_hidden_state' = false; expected true (an EAGLE-3 "
                              "head that takes the target's aux hidden states through fc)")

    # aux hidden states: the count as vLLM's drafter reads it, the ids as vLLM's target selects them
    top_ids = as_id_list(raw.get("eagle_aux_hidden_state_layer_ids"), where, "eagle_aux_hidden_state_layer_ids")
    eagle_ids = as_id_list(eagle.get("eagle_aux_hidden_state_layer_ids"), where,
                           "eagle_config.eagle_aux_hidden_state_layer_ids")
    dflash = raw.get("dflash_config") or {}
    dflash_ids = as_id_list(dflash.get("target_layer_ids") if isinstance(dflash, dict) else None, where,
                            "dflash_config.target_layer_ids")
    if kw["architecture"] == "qwen3" and raw.get("num_aux_layers") is not None:
        n_aux, n_key = _int(raw, "num_aux_layers", where), "field 'num_aux_layers'"
    elif raw.get("num_aux_hidden_states") is not None:
        n_aux, n_key = _int(raw, "num_aux_hidden_states", where), "field 'num_aux_hidden_states'"
    else:  # Llama counts only eagle_config's ids; Qwen3 also the top-level ones
        sources = [("eagle_config.eagle_aux_hidden_state_layer_ids", eagle_ids)]
        if kw["architecture"] == "qwen3":
            sources.insert(0, ("eagle_aux_hidden_state_layer_ids", top_ids))
        n_aux, n_key = 3, "vLLM's default count"
        for key, v in sources:
            if v is not None:
                n_aux, n_key = len(v), f"the length of '{key}'"
                break
    if top_ids is not None:
        ids, ids_key = top_ids, "eagle_aux_hidden_state_layer_ids"
    elif dflash_ids is not None:
        ids, ids_key = [i + 1 for i in dflash_ids], "dflash_config.target_layer_ids"
    else:
        ids, ids_key = eagle_ids, "eagle_config.eagle_aux_hidden_state_layer_ids"
    if ids is not None:
        if len(ids) != n_aux:
            raise CheckpointError(f"{where}: field '{ids_key}' = {ids} selects {len(ids)} target layers but "
                                  f"the drafter reads {n_aux} aux hidden states ({n_key}); expected {n_aux} layer ids")
        norm_ids = sorted(set(ids))
        if len(norm_ids) != len(ids):
            raise CheckpointError(f"{where}: field '{ids_key}' = {ids} repeats a layer; expected {n_aux} distinct ids "
                                  "(vLLM de-duplicates them)")
        if norm_ids != ids:
            warnings.warn(f"{where}: '{ids_key}' = {ids} is not sorted; vLLM concatenates the target's aux states "
                          f"in sorted order, so reading it as {norm_ids}", stacklevel=3)
        if top_ids is not None and eagle_ids is not None and sorted(eagle_ids) != norm_ids:
            warnings.warn(f"{where}: 'eagle_aux_hidden_state_layer_ids' = {top_ids} and 'eagle_config."
                          f"eagle_aux_hidden_state_layer_ids' = {eagle_ids} differ; vLLM's target uses the top-level "
                          "ids", stacklevel=3)
        ids = norm_ids

    mask_id, mask_key = _mask_token(raw, where)
    own = raw.get(PEDAGLE_KEY) or {}
    if not isinstance(own, dict):
        raise CheckpointError(f"{where}: field '{PEDAGLE_KEY}' = {own!r}; expected an object")
    depth = own.get("parallel_depth")
    if depth is not None:
        depth = _int(own, "parallel_depth", f"{where} ({PEDAGLE_KEY})")
    kw.update(
        draft_vocab_size=_int(raw, "draft_vocab_size", where, kw["vocab_size"]),
        target_hidden_size=_int(raw, "target_hidden_size", where, None),
        aux_layer_ids=ids,
        num_aux_hidden_states=n_aux,
        mask_token_id=mask_id,
        parallel_depth=depth if (depth is not None and mask_id is not None) else 1,
        norm_before_residual=_bool(raw, "norm_before_residual", where),
        norm_before_fc=_bool(raw, "norm_before_fc", where, _bool(eagle, "norm_before_fc", where)),
        fc_norm=_bool(raw, "fc_norm", where),
        norm_output=_bool(raw, "norm_output", where),
    )
    tensors, ignored = canonical_names(stored, where)
    cfg = build_config(kw, where, mask_key, tensors)
    return ReadResult(path=path, format=FORMAT, config_file=config_file, config=cfg, tensors=tensors,
                      ignored=ignored, mask_token_source=mask_key,
                      parallel_depth_recorded=depth is not None and mask_id is not None,
                      verifier_name_or_path=own.get("verifier_name_or_path"))


def config_dict(cfg: DrafterConfig, dtype_name: str | None, verifier_name_or_path: str | None = None) -> dict[str, Any]:
    d = write_layer_config(cfg, dtype_name)
    ids = list(cfg.aux_layer_ids) if cfg.aux_layer_ids is not None else None
    if ids is None and cfg.n_aux != 3:
        warnings.warn(f"aux_layer_ids unknown for a head with {cfg.n_aux} aux hidden states: vLLM's target would pick "
                      "its default 3 layers (2, L//2, L-3); set DrafterConfig.aux_layer_ids", stacklevel=3)
    d.update(
        draft_vocab_size=cfg.draft_vocab_size,
        target_hidden_size=cfg.target_hidden_size,
        num_aux_hidden_states=cfg.n_aux,
        norm_before_residual=cfg.norm_before_residual,
        norm_before_fc=cfg.norm_before_fc,
        fc_norm=cfg.fc_norm,
        norm_output=cfg.norm_output,
        eagle_config={"use_aux_hidden_state": True, "norm_before_fc": cfg.norm_before_fc},
    )
    if ids is not None:
        d["eagle_aux_hidden_state_layer_ids"] = ids
        d["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = ids
    if cfg.mask_token_id is not None:
        # vLLM takes mask_token_id first (if set) and older readers ptd_token_id: write both, same value.
        d["mask_token_id"] = cfg.mask_token_id
        d["ptd_token_id"] = cfg.mask_token_id
    own: dict[str, Any] = {"format_version": FORMAT_VERSION, "parallel_depth": cfg.parallel_depth}
    if verifier_name_or_path:
        own["verifier_name_or_path"] = verifier_name_or_path
    d[PEDAGLE_KEY] = own
    return d


def tensor_dict(cfg: DrafterConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical tensors -> the tensors to store (names unchanged; ``mask_hidden`` as [1, 1, n]; ``t2d``)."""
    out = dict(tensors)
    if "mask_hidden" in out:
        out["mask_hidden"] = out["mask_hidden"].reshape(1, 1, -1)
    if "d2t" in out:
        out["t2d"] = t2d_from_d2t(out["d2t"], cfg.vocab_size)
    return out


def t2d_from_d2t(d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [vocab]: True at the target ids the draft vocabulary covers (speculators' companion map)."""
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[torch.arange(d2t.shape[0]) + d2t.to(torch.int64)] = True
    return t2d
