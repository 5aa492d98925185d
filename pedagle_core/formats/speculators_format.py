"""The speculators format (vllm-project/speculators): ``speculators_model_type`` "peagle" (P-EAGLE)
or "eagle3" (plain EAGLE-3), the layers under ``transformer_layer_config``, the trained parallel depth
as ``speculators_config.proposal_methods[0].speculative_tokens`` and the target as
``speculators_config.verifier``. vLLM serves it as ``vllm serve DIR`` (it swaps in the verifier).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..config import DrafterConfig
from .common import ReadResult, as_id_list, as_int, build_config, canonical_names
from .errors import CheckpointError
from .hf_config import _bool, _int, read_layer_config, write_layer_config
from .safetensors_io import TensorRecord
from .vllm_format import tensor_dict  # noqa: F401  (both formats store mask_hidden as [1,1,n] plus t2d)

FORMAT = "speculators"
MODEL_TYPES = {"peagle": "PEagleSpeculator", "eagle3": "Eagle3Speculator"}
SPECULATORS_VERSION = "0.3.0"
# Serving default for plain EAGLE-3 heads, which record no trained depth.
EAGLE3_DEFAULT_TOKENS = 3


def looks_like(raw: dict) -> bool:
    return "speculators_config" in raw or "speculators_model_type" in raw


def read(path: Path, raw: dict, config_file: Path, stored: dict[str, TensorRecord]) -> ReadResult:
    where = str(config_file)
    smt = raw.get("speculators_model_type")
    if smt not in MODEL_TYPES:
        raise CheckpointError(f"{where}: field 'speculators_model_type' = {smt!r}; expected one of "
                              f"{sorted(MODEL_TYPES)}")
    tlc = raw.get("transformer_layer_config")
    if not isinstance(tlc, dict):
        raise CheckpointError(f"{where}: field 'transformer_layer_config' = {tlc!r}; expected an object holding the "
                              "drafter layers' Llama/Qwen3 config")
    tlc = dict(tlc)
    tlc.setdefault("model_type", "llama")              # speculators' default layer config class
    kw = read_layer_config(tlc, f"{where} (transformer_layer_config)")
    ids = as_id_list(raw.get("eagle_aux_hidden_state_layer_ids"), where, "eagle_aux_hidden_state_layer_ids")
    if ids is not None:
        if len(set(ids)) != len(ids):
            raise CheckpointError(f"{where}: field 'eagle_aux_hidden_state_layer_ids' = {ids} repeats a layer; "
                                  "expected distinct target layer ids")
        ids = sorted(ids)

    spec = raw.get("speculators_config") or {}
    if not isinstance(spec, dict):
        raise CheckpointError(f"{where}: field 'speculators_config' = {spec!r}; expected an object")
    methods = spec.get("proposal_methods") or []
    depth = None
    if methods:
        if not isinstance(methods[0], dict):
            raise CheckpointError(f"{where}: field 'speculators_config.proposal_methods[0]' = {methods[0]!r}; "
                                  "expected an object with 'speculative_tokens'")
        if methods[0].get("speculative_tokens") is not None:
            depth = _int(methods[0], "speculative_tokens", f"{where} (speculators_config.proposal_methods[0])")
    verifier = spec.get("verifier") or {}
    if not isinstance(verifier, dict):
        verifier = {}

    mask_id, mask_key = None, None
    if smt == "peagle":
        mask_id = as_int(raw.get("mask_token_id"), where, "mask_token_id")
        mask_key = "mask_token_id" if mask_id is not None else None
        if _bool(raw, "fc_norm", where) or _bool(raw, "norm_output", where):
            warnings.warn(f"{where}: 'fc_norm'/'norm_output' are set, but vLLM's speculators reader does not forward "
                          "them for 'peagle' heads; convert to the vLLM format to serve this head as trained",
                          stacklevel=3)
    kw.update(
        draft_vocab_size=_int(raw, "draft_vocab_size", where, kw["vocab_size"]),
        target_hidden_size=_int(raw, "target_hidden_size", where, None),
        aux_layer_ids=ids,
        num_aux_hidden_states=len(ids) if ids else 3,
        mask_token_id=mask_id,
        parallel_depth=depth if (depth is not None and mask_id is not None) else 1,
        # vLLM's defaults: False for peagle, True for plain eagle3
        norm_before_residual=_bool(raw, "norm_before_residual", where, smt == "eagle3"),
        norm_before_fc=_bool(raw, "norm_before_fc", where),
        fc_norm=_bool(raw, "fc_norm", where),
        norm_output=_bool(raw, "norm_output", where),
    )
    tensors, ignored = canonical_names(stored, where)
    cfg = build_config(kw, where, mask_key, tensors)
    name = verifier.get("name_or_path")
    return ReadResult(path=path, format=FORMAT, config_file=config_file, config=cfg, tensors=tensors, ignored=ignored,
                      mask_token_source=mask_key, parallel_depth_recorded=depth is not None and mask_id is not None,
                      verifier_name_or_path=name if isinstance(name, str) else None,
                      verifier_architectures=list(verifier.get("architectures") or []))


def config_dict(cfg: DrafterConfig, dtype_name: str | None, verifier_name_or_path: str | None = None,
                verifier_architectures: list[str] | None = None) -> dict[str, Any]:
    from .. import __version__

    peagle = cfg.mask_token_id is not None
    smt = "peagle" if peagle else "eagle3"
    if peagle and (cfg.fc_norm or cfg.norm_output):
        warnings.warn("fc_norm/norm_output are set, but vLLM's speculators reader does not forward them for 'peagle' "
                      "heads: vLLM would serve this head without them; prefer the vLLM format", stacklevel=3)
    if not verifier_name_or_path:
        warnings.warn("no verifier given: `vllm serve DIR` needs speculators_config.verifier.name_or_path; pass "
                      "verifier_name_or_path (CLI: --verifier)", stacklevel=3)
    tlc = write_layer_config(cfg, dtype_name)
    tlc.pop("architectures")
    d: dict[str, Any] = {
        "architectures": [MODEL_TYPES[smt]],
        "speculators_model_type": smt,
        "transformer_layer_config": tlc,
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": cfg.target_hidden_size,
        "eagle_aux_hidden_state_layer_ids": list(cfg.aux_layer_ids) if cfg.aux_layer_ids is not None else None,
        "norm_before_residual": cfg.norm_before_residual,
        "norm_before_fc": cfg.norm_before_fc,
        "fc_norm": cfg.fc_norm,
        "norm_output": cfg.norm_output,
        "embed_requires_grad": peagle,
        "speculators_config": {
            "algorithm": smt,
            "proposal_methods": [{"proposal_type": "greedy",
                                  "speculative_tokens": cfg.parallel_depth if peagle else EAGLE3_DEFAULT_TOKENS}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier_name_or_path, "architectures": list(verifier_architectures or [])},
        },
        "speculators_version": SPECULATORS_VERSION,
        "pedagle_version": __version__,
    }
    if cfg.aux_layer_ids is None:
        if cfg.n_aux != 3:
            raise CheckpointError(f"config field 'aux_layer_ids' is unknown for a head with {cfg.n_aux} aux hidden "
                                  "states; the speculators format derives the count from "
                                  "'eagle_aux_hidden_state_layer_ids', expected a list of that many target layer ids")
        del d["eagle_aux_hidden_state_layer_ids"]
    if peagle:
        d["mask_token_id"] = cfg.mask_token_id
    if dtype_name:
        d["torch_dtype"] = dtype_name
    return d


