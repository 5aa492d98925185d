"""The Llama/Qwen3 (transformers-style) part of a drafter config: read and write.

Both on-disk formats describe the drafter's decoder layers with a plain transformers config: the vLLM
format at the top level of ``config.json``, the speculators format under ``transformer_layer_config``.
"""

from __future__ import annotations

import warnings
from typing import Any

from .errors import CheckpointError

ARCH_BY_MODEL_TYPE = {"llama": "llama", "qwen3": "qwen3"}
HF_CLASS = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# transformers' class defaults (LlamaConfig, Qwen3Config): config.json files are saved as diffs against
# them, so a missing field means this value (None: derived, head_dim = hidden/heads, kv heads = heads).
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
                  max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, hidden_act="silu",
                  max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=10000.0),
}


def _int(d: dict, key: str, where: str, default: Any = ...) -> Any:
    if key not in d or d[key] is None:
        if default is ...:
            raise CheckpointError(f"{where}: missing field '{key}'; expected a positive integer")
        return default
    v = d[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise CheckpointError(f"{where}: field '{key}' = {v!r}; expected a positive integer")
    return v


def _bool(d: dict, key: str, where: str, default: bool = False) -> bool:
    v = d.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise CheckpointError(f"{where}: field '{key}' = {v!r}; expected true or false")
    return v


def architecture_of(d: dict, where: str) -> str:
    """'llama' or 'qwen3' from ``model_type`` (or, without one, from ``architectures``)."""
    mt = d.get("model_type")
    if mt in ARCH_BY_MODEL_TYPE:
        return ARCH_BY_MODEL_TYPE[mt]
    if mt is None:
        archs = " ".join(d.get("architectures") or [])
        if "Qwen3" in archs:
            return "qwen3"
        if "Llama" in archs or "PEagleDraftModel" in archs:
            return "llama"
    raise CheckpointError(f"{where}: field 'model_type' = {mt!r}; expected one of {sorted(ARCH_BY_MODEL_TYPE)} "
                          "(a Llama- or Qwen3-style drafter)")


def read_rope(d: dict, where: str, default_theta: float = 10000.0) -> dict[str, Any]:
    """``rope_parameters``, or the legacy ``rope_theta`` + ``rope_scaling`` (which wins, as in transformers)."""
    scaling = d.get("rope_scaling")
    params = scaling if scaling else d.get("rope_parameters")
    params = dict(params) if params else {}
    if params and all(isinstance(v, dict) or v is None for v in params.values()):
        raise CheckpointError(f"{where}: field 'rope_parameters' is nested per layer type ({sorted(params)}); "
                              "expected one RoPE setting for every drafter layer")
    theta = d.get("rope_theta")
    params.setdefault("rope_theta", float(theta) if theta is not None else default_theta)
    kind = params.pop("type", None)
    params.setdefault("rope_type", kind or "default")
    if params["rope_type"] not in ROPE_TYPES:
        raise CheckpointError(f"{where}: field 'rope_parameters.rope_type' = {params['rope_type']!r}; expected one "
                              f"of {ROPE_TYPES}")
    if params["rope_type"] in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings", d.get("max_position_embeddings") or 2048)
    if params["rope_type"] in ("linear", "llama3", "yarn") and "factor" not in params:
        raise CheckpointError(f"{where}: field 'rope_parameters.factor' is missing for rope_type "
                              f"{params['rope_type']!r}; expected a scaling factor")
    params["rope_theta"] = float(params["rope_theta"])
    return params


def read_layer_config(d: dict, where: str) -> dict[str, Any]:
    """DrafterConfig keyword arguments from a Llama/Qwen3 transformers config dict (missing fields take
    transformers' class defaults, as transformers and vLLM read them)."""
    arch = architecture_of(d, where)
    dflt = CLASS_DEFAULTS[arch]
    if d.get("max_position_embeddings") is None:
        d = dict(d, max_position_embeddings=dflt["max_position_embeddings"])
    heads = _int(d, "num_attention_heads", where, dflt["num_attention_heads"])
    kw: dict[str, Any] = dict(
        architecture=arch,
        hidden_size=_int(d, "hidden_size", where, dflt["hidden_size"]),
        num_hidden_layers=_int(d, "num_hidden_layers", where, dflt["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=_int(d, "num_key_value_heads", where, dflt["num_key_value_heads"] or heads),
        head_dim=_int(d, "head_dim", where, dflt["head_dim"]),
        intermediate_size=_int(d, "intermediate_size", where, dflt["intermediate_size"]),
        vocab_size=_int(d, "vocab_size", where, dflt["vocab_size"]),
        max_position_embeddings=_int(d, "max_position_embeddings", where),
        rms_norm_eps=float(d["rms_norm_eps"]) if d.get("rms_norm_eps") is not None else dflt["rms_norm_eps"],
        hidden_act=d.get("hidden_act") or dflt["hidden_act"],
        attention_bias=_bool(d, "attention_bias", where),
        mlp_bias=_bool(d, "mlp_bias", where),
        rope_parameters=read_rope(d, where, dflt["rope_theta"]),
    )
    layer_types, window = d.get("layer_types"), d.get("sliding_window")
    if arch == "qwen3" and not d.get("use_sliding_window", False):
        window = None                       # transformers' Qwen3Config (read by vLLM) drops an unused window
    if layer_types is not None and "sliding_attention" in layer_types and window:
        if arch == "llama":
            warnings.warn(f"{where}: 'layer_types' has sliding-window layers, but Llama EAGLE-3 heads (vLLM's "
                          "Eagle3LlamaForCausalLM) use full attention in every layer; ignoring them", stacklevel=4)
        else:
            kw["layer_types"], kw["sliding_window"] = list(layer_types), int(window)
    return kw


def write_layer_config(cfg, dtype_name: str | None = None) -> dict[str, Any]:
    """A transformers config dict of ``cfg``'s layers that both transformers 5 and older readers parse."""
    rope = dict(cfg.rope_parameters)
    d: dict[str, Any] = {
        "architectures": [HF_CLASS[cfg.architecture]],
        "model_type": cfg.architecture,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_act": cfg.hidden_act,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "tie_word_embeddings": False,
        "rope_parameters": rope,
        # legacy spelling for transformers < 5 readers; with rope_scaling set, transformers 5 reads it instead
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None if rope.get("rope_type", "default") == "default" else dict(rope),
    }
    if cfg.layer_types is not None and "sliding_attention" in cfg.layer_types:
        if cfg.architecture != "qwen3":
            raise CheckpointError(f"config field 'layer_types' = {cfg.layer_types}: vLLM's Llama EAGLE-3 head has no "
                                  "sliding-window layers; expected architecture 'qwen3' for a sliding-window drafter")
        d.update(layer_types=list(cfg.layer_types), sliding_window=cfg.sliding_window, use_sliding_window=True,
                 max_window_layers=0)
    elif cfg.architecture == "qwen3":
        d.update(use_sliding_window=False, sliding_window=None)
    if dtype_name:
        d["torch_dtype"] = dtype_name
    return d
