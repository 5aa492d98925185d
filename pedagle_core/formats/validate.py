"""Checks of a checkpoint against its config: which tensors must exist, their shapes and dtypes, and
their values (finite weights, a d2t that stays inside the target vocabulary).

Structural checks return `Problem`s (so `describe` can list them); loaders raise the errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DrafterConfig
from .errors import CheckpointError, Problem
from .safetensors_io import TensorRecord

SHARED = ("embed_tokens.weight", "lm_head.weight")
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Expected:
    shape: tuple[int, ...]
    kind: str           # "float" or "int"
    formula: str        # how the shape follows from the config


def _formula(name: str) -> str:
    """The config fields a tensor's shape comes from (for error messages)."""
    m = _LAYER.match(name)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        width = "2 * hidden_size" if i == 0 else "hidden_size"
        table = {
            "self_attn.q_proj.weight": f"[num_attention_heads * head_dim, {width}]",
            "self_attn.k_proj.weight": f"[num_key_value_heads * head_dim, {width}]",
            "self_attn.v_proj.weight": f"[num_key_value_heads * head_dim, {width}]",
            "self_attn.o_proj.weight": "[hidden_size, num_attention_heads * head_dim]",
            "self_attn.q_proj.bias": "[num_attention_heads * head_dim]",
            "self_attn.k_proj.bias": "[num_key_value_heads * head_dim]",
            "self_attn.v_proj.bias": "[num_key_value_heads * head_dim]",
            "self_attn.o_proj.bias": "[hidden_size]",
            "self_attn.q_norm.weight": "[head_dim]",
            "self_attn.k_norm.weight": "[head_dim]",
            "mlp.gate_proj.weight": "[intermediate_size, hidden_size]",
            "mlp.up_proj.weight": "[intermediate_size, hidden_size]",
            "mlp.down_proj.weight": "[hidden_size, intermediate_size]",
            "mlp.gate_proj.bias": "[intermediate_size]",
            "mlp.up_proj.bias": "[intermediate_size]",
            "mlp.down_proj.bias": "[hidden_size]",
        }
        return table.get(rest, "[hidden_size]")
    if name.startswith("fc_norm."):
        return "[target_hidden_size]"
    return {
        "embed_tokens.weight": "[vocab_size, hidden_size]",
        "lm_head.weight": "[draft_vocab_size, hidden_size]",
        "fc.weight": "[hidden_size, num_aux_hidden_states * target_hidden_size]",
        "input_norm.weight": "[num_aux_hidden_states * target_hidden_size]",
        "mask_hidden": "[1, 1, num_aux_hidden_states * target_hidden_size] (any shape with that many elements)",
        "d2t": "[draft_vocab_size] integer offsets",
        "norm.weight": "[hidden_size]",
    }.get(name, "")


def model_tensors(cfg: DrafterConfig) -> dict[str, Expected]:
    """Every tensor of a `Drafter` for ``cfg``: its state_dict names, shapes and kinds, computed from the
    config (no module is built; tests check this against ``Drafter(cfg).state_dict()``)."""
    H, I, hd = cfg.hidden_size, cfg.intermediate_size, int(cfg.head_dim)
    nq, nkv, fc_in = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.fc_input_size
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (cfg.vocab_size, H)}
    if cfg.norm_before_fc:
        shapes["input_norm.weight"] = (fc_in,)
    if cfg.fc_norm:
        shapes.update({f"fc_norm.{j}.weight": (int(cfg.target_hidden_size),) for j in range(cfg.n_aux)})
    shapes["fc.weight"] = (H, fc_in)
    for i in range(cfg.num_hidden_layers):
        p, width = f"layers.{i}.", (2 * H if i == 0 else H)
        for proj, out in (("q", nq), ("k", nkv), ("v", nkv)):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (out, width)
            if cfg.attention_bias:
                shapes[f"{p}self_attn.{proj}_proj.bias"] = (out,)
        shapes[f"{p}self_attn.o_proj.weight"] = (H, nq)
        if cfg.attention_bias:
            shapes[f"{p}self_attn.o_proj.bias"] = (H,)
        if cfg.qk_norm:
            shapes[f"{p}self_attn.q_norm.weight"] = shapes[f"{p}self_attn.k_norm.weight"] = (hd,)
        for proj, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
            shapes[f"{p}mlp.{proj}_proj.weight"] = shape
            if cfg.mlp_bias:
                shapes[f"{p}mlp.{proj}_proj.bias"] = shape[:1]
        shapes[f"{p}input_layernorm.weight"] = shapes[f"{p}post_attention_layernorm.weight"] = (H,)
        if i == 0:
            shapes[f"{p}hidden_norm.weight"] = (H,)
    shapes["norm.weight"] = (H,)
    shapes["lm_head.weight"] = (int(cfg.draft_vocab_size), H)
    shapes["mask_hidden"] = (1, 1, fc_in)
    shapes["d2t"] = (int(cfg.draft_vocab_size),)
    return {n: Expected(s, "int" if n == "d2t" else "float", _formula(n)) for n, s in shapes.items()}


def expected_tensors(cfg: DrafterConfig, *, mask_hidden: bool) -> dict[str, Expected]:
    """The tensors a checkpoint of ``cfg`` must store: shared embed/lm_head only if the head has its own,
    ``d2t`` only with a reduced draft vocabulary, ``mask_hidden`` only if asked."""
    exp = model_tensors(cfg)
    if not cfg.has_embed_tokens:
        exp.pop("embed_tokens.weight")
    if not cfg.has_lm_head:
        exp.pop("lm_head.weight")
    if cfg.draft_vocab_size == cfg.vocab_size:
        exp.pop("d2t")
    if not mask_hidden:
        exp.pop("mask_hidden")
    return exp


def describe_sizes(cfg: DrafterConfig) -> str:
    return (f"hidden_size={cfg.hidden_size}, num_hidden_layers={cfg.num_hidden_layers}, "
            f"num_attention_heads={cfg.num_attention_heads}, num_key_value_heads={cfg.num_key_value_heads}, "
            f"head_dim={cfg.head_dim}, intermediate_size={cfg.intermediate_size}, vocab_size={cfg.vocab_size}, "
            f"draft_vocab_size={cfg.draft_vocab_size}, num_aux_hidden_states={cfg.n_aux}, "
            f"target_hidden_size={cfg.target_hidden_size}")


def check_structure(cfg: DrafterConfig, stored: dict[str, TensorRecord], config_file: Path,
                    mask_hidden_required: bool) -> list[Problem]:
    """Compare the stored tensors (canonical name -> record) with what ``cfg`` needs."""
    problems: list[Problem] = []
    exp = expected_tensors(cfg, mask_hidden=mask_hidden_required or "mask_hidden" in stored)
    known = model_tensors(cfg)
    sizes = describe_sizes(cfg)
    files = sorted({str(r.file) for r in stored.values()}) or ["<no weights>"]
    where = files[0] if len(files) == 1 else f"{Path(files[0]).parent}/*.safetensors"

    missing = [n for n in exp if n not in stored]
    optional = {n: known[n] for n in ("d2t", "mask_hidden") if n in stored and n not in exp}
    if missing:
        listed = ", ".join(f"'{n}' {list(exp[n].shape)}" for n in missing)
        problems.append(Problem("error", f"{where}: missing tensor(s) {listed}; expected by {config_file} "
                                         f"({sizes}). Missing weights are never filled with initial values"))
    unknown = []
    shape_errors: list[Problem] = []
    for name, rec in stored.items():
        e = exp.get(name) or optional.get(name)
        if e is None:
            m = _LAYER.match(name)
            if m and int(m.group(1)) >= cfg.num_hidden_layers:
                problems.append(Problem("error", f"{rec.file}: tensor '{rec.name}' belongs to layer {m.group(1)}, "
                                                 f"but {config_file} has num_hidden_layers = {cfg.num_hidden_layers}; "
                                                 "expected the config and the weights to agree"))
            else:
                unknown.append(rec.name)
            continue
        if name == "mask_hidden":
            shape_ok = rec.numel == e.shape[-1]
        else:
            shape_ok = rec.shape == e.shape
        if not shape_ok:
            shape_errors.append(Problem("error", f"{rec.file}: tensor '{rec.name}' has shape {list(rec.shape)}; "
                                                 f"expected {list(e.shape)} = {e.formula} from {config_file} ({sizes})"))
        if e.kind == "float" and rec.dtype not in FLOAT_DTYPES:
            problems.append(Problem("error", f"{rec.file}: tensor '{rec.name}' has dtype {rec.dtype}; expected a "
                                             f"floating-point dtype ({', '.join(FLOAT_DTYPES)})"))
        if e.kind == "int" and rec.kind != "int":
            problems.append(Problem("error", f"{rec.file}: tensor '{rec.name}' has dtype {rec.dtype}; expected an "
                                             "integer dtype (I64 offsets: target_id = draft_id + d2t[draft_id])"))
    if shape_errors:
        problems += _defaulted_sizes(cfg, config_file, shape_errors) or shape_errors
    if unknown:
        problems.append(Problem("warning", f"{where}: ignoring unknown tensor(s) {sorted(unknown)}; expected only "
                                           "the drafter's weights"))
    problems += _dtype_disagreement(config_file, stored)
    return problems


SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "vocab_size")


def _layer_config(config_file: Path) -> tuple[dict, str]:
    """The raw dict holding the decoder-layer fields and how to name it ("" or "transformer_layer_config.")."""
    import json

    try:
        raw = json.loads(Path(config_file).read_text())
    except (OSError, ValueError):
        return {}, ""
    if not isinstance(raw, dict):
        return {}, ""
    tlc = raw.get("transformer_layer_config")
    return (tlc, "transformer_layer_config.") if isinstance(tlc, dict) else (raw, "")


def _defaulted_sizes(cfg: DrafterConfig, config_file: Path, shape_errors: list[Problem]) -> list[Problem]:
    """When shapes disagree and config.json lacks size fields (so transformers' class defaults were taken),
    one error naming the missing fields instead of a shape error per tensor."""
    layer, prefix = _layer_config(config_file)
    if not layer:
        return []
    absent = [f for f in SIZE_FIELDS if layer.get(f) is None]
    if not absent or absent == ["head_dim"] and "hidden_size" in layer:
        return []
    assumed = ", ".join(f"'{prefix}{f}' (assumed {getattr(cfg, f)})" for f in absent)
    first = shape_errors[0].message.split(" from ")[0]
    return [Problem("error", f"{config_file}: field(s) {assumed} missing; transformers' defaults for them do not "
                             f"fit the weights ({len(shape_errors)} tensor(s) with other shapes, e.g. {first}); "
                             f"expected the drafter's own values in {config_file.name}")]


_CONFIG_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def _dtype_disagreement(config_file: Path, stored: dict[str, TensorRecord],
                        consequence: str = "they load as stored unless a dtype is given (--dtype)") -> list[Problem]:
    """A warning when the floating-point weights are stored in another dtype than config.json says."""
    import json

    try:
        raw = json.loads(Path(config_file).read_text())
    except (OSError, ValueError):
        return []
    layer, prefix = _layer_config(config_file)
    for d, pre in ((raw, ""), (layer, prefix)):
        for key in ("torch_dtype", "dtype"):
            said = d.get(key) if isinstance(d, dict) else None
            if isinstance(said, str) and said.replace("torch.", "") in _CONFIG_DTYPES:
                code = _CONFIG_DTYPES[said.replace("torch.", "")]
                floats = sorted({r.dtype for r in stored.values() if r.dtype in FLOAT_DTYPES})
                if floats and floats != [code]:
                    files = sorted({r.file.name for r in stored.values() if r.dtype in FLOAT_DTYPES and r.dtype != code})
                    return [Problem("warning", f"{config_file}: field '{pre}{key}' = {said!r}, but the weights in "
                                               f"{', '.join(files)} are stored as {', '.join(floats)}; {consequence}")]
                return []
    return []


def known_tensor_names(cfg: DrafterConfig) -> set[str]:
    """Canonical names a checkpoint of ``cfg`` may store (anything else is unknown and ignored)."""
    return set(model_tensors(cfg))


def check_values(cfg: DrafterConfig, tensors: dict[str, torch.Tensor], origin: dict[str, str]) -> None:
    """Value checks on loaded tensors (canonical names); ``origin`` maps a name to 'file: tensor NAME'."""
    for name, t in tensors.items():
        if t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                n_nan = int(torch.isnan(t).sum())
                raise CheckpointError(f"{origin[name]} has {bad} non-finite value(s) ({n_nan} NaN, {bad - n_nan} "
                                      "inf); expected finite weights")
    d2t = tensors.get("d2t")
    if d2t is not None:
        check_d2t(cfg, d2t, origin["d2t"])


def check_d2t(cfg: DrafterConfig, d2t: torch.Tensor, where: str) -> None:
    if d2t.dim() != 1 or d2t.shape[0] != cfg.draft_vocab_size:
        raise CheckpointError(f"{where} has shape {list(d2t.shape)}; expected [{cfg.draft_vocab_size}] "
                              "(draft_vocab_size)")
    target = torch.arange(d2t.shape[0], dtype=torch.int64) + d2t.to(torch.int64)
    bad = ((target < 0) | (target >= cfg.vocab_size)).nonzero().view(-1)
    if bad.numel():
        i = int(bad[0])
        raise CheckpointError(f"{where} maps draft id {i} to target id {int(target[i])} (offset {int(d2t[i])}), "
                              f"and {bad.numel()} draft id(s) in all outside the target vocabulary; expected "
                              f"draft_id + d2t[draft_id] in [0, {cfg.vocab_size}) (vocab_size)")
    if cfg.draft_vocab_size == cfg.vocab_size and bool(d2t.ne(0).any()):
        raise CheckpointError(f"{where} is not the identity although draft_vocab_size == vocab_size "
                              f"= {cfg.vocab_size}; expected all-zero offsets (vLLM ignores d2t when the "
                              "vocabularies have the same size)")
