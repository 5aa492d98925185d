"""Detect, read, load, save, convert and describe drafter checkpoints.

Reading goes format reader -> `ReadResult` (config + canonical tensor names, no data) -> structural
checks -> tensor data -> value checks -> `Drafter`. Writing goes `Drafter` (or a converted checkpoint's
tensors) -> canonical tensors -> format writer. Nothing here fills a missing weight with initial values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import DrafterConfig
from ..model import Drafter, rope_inv_freq
from . import speculators_format, vllm_format
from .common import ReadResult
from .errors import CheckpointError, Problem, raise_first_error
from .safetensors_io import (DTYPES, INDEX_NAME, SINGLE_NAME, TensorRecord, clear_weights, load_tensors, read_header,
                             read_headers, write_json, write_safetensors)
from .validate import SHARED, check_d2t, check_structure, check_values, known_tensor_names

FORMATS = {"vllm": vllm_format, "speculators": speculators_format}
MODES = ("auto", "parallel", "autoregressive")
PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------- reading
def _open(path: PathLike) -> tuple[Path, Path, dict]:
    p = Path(path)
    if p.is_file() and p.name == "config.json":
        p = p.parent
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such checkpoint directory; expected a directory holding config.json and "
                              "safetensors weights")
    cf = p / "config.json"
    if not cf.is_file():
        raise CheckpointError(f"{cf}: missing; expected the drafter's config.json in {p}")
    try:
        raw = json.loads(cf.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{cf}: unreadable ({e}); expected a JSON object") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cf}: holds a {type(raw).__name__}; expected a JSON object")
    return p, cf, raw


def _has_weight_files(d: Path) -> bool:
    return (d / INDEX_NAME).is_file() or any(d.glob("*.safetensors"))


def _detect(cf: Path, raw: dict, stored: dict[str, TensorRecord] | None) -> str:
    if speculators_format.looks_like(raw):
        return "speculators"
    if vllm_format.looks_like(raw):
        if vllm_format.has_eagle_markers(raw):
            return "vllm"
        names = stored or {}
        if any(n.endswith("fc.weight") or n.startswith(("midlayer.", "model.midlayer.")) for n in names):
            return "vllm"
        raise CheckpointError(f"{cf}: a plain '{raw.get('model_type')}' model config without EAGLE-3 keys and no "
                              "'fc.weight' tensor (a target model, not a drafter?); expected a drafter checkpoint: "
                              "the vLLM format ('draft_vocab_size', 'eagle_config', ... and an fc) or the "
                              "speculators format ('speculators_model_type')")
    raise CheckpointError(f"{cf}: unknown checkpoint format (model_type = {raw.get('model_type')!r}, architectures = "
                          f"{raw.get('architectures')!r}); expected the speculators format ('speculators_model_type': "
                          "'peagle' or 'eagle3') or the vLLM format (a Llama/Qwen3 drafter config, model_type "
                          "'llama' or 'qwen3')")


def detect_format(path: PathLike) -> str:
    """'vllm' or 'speculators'; anything else raises `CheckpointError`."""
    d, cf, raw = _open(path)
    stored = None
    if not (speculators_format.looks_like(raw) or vllm_format.has_eagle_markers(raw)) and _has_weight_files(d):
        stored = read_headers(d)
    return _detect(cf, raw, stored)


def read_checkpoint(path: PathLike, need_weights: bool = True) -> ReadResult:
    """Config and tensor directory of a checkpoint (no tensor data is read)."""
    d, cf, raw = _open(path)
    if not (speculators_format.looks_like(raw) or vllm_format.looks_like(raw)):
        _detect(cf, raw, None)                       # unknown format: say so before looking for weights
    stored = read_headers(d) if (need_weights or _has_weight_files(d)) else {}
    fmt = _detect(cf, raw, stored)
    return FORMATS[fmt].read(d, raw, cf, stored)


def read_config(path: PathLike) -> tuple[DrafterConfig, str]:
    """(config, format). ``has_embed_tokens``/``has_lm_head`` reflect the stored tensors (headers only)."""
    r = read_checkpoint(path, need_weights=False)
    return r.config, r.format


def _resolve_mode(r: ReadResult, mode: str) -> ReadResult:
    """Apply ``mode``: 'parallel' needs the mask token and ``mask_hidden``; otherwise a half P-EAGLE head
    (one of the two missing) loads as a plain EAGLE-3 head."""
    if mode not in MODES:
        raise CheckpointError(f"mode = {mode!r}; expected one of {MODES}")
    cfg = r.config
    has_token, has_mask = cfg.mask_token_id is not None, "mask_hidden" in r.tensors
    n = cfg.fc_input_size
    weights = sorted({str(t.file) for t in r.tensors.values()})
    wfile = weights[0] if len(weights) == 1 else str(r.path)
    if mode == "parallel":
        if not has_token:
            keys = ("'mask_token_id'" if r.format == "speculators"
                    else "/".join(f"'{k}'" for k in vllm_format.MASK_TOKEN_KEYS))
            raise CheckpointError(f"{r.config_file}: no mask token ({keys}); expected one for parallel drafting "
                                  "(mode='parallel'). A plain EAGLE-3 head loads with mode='autoregressive'")
        if not has_mask:
            raise CheckpointError(f"{wfile}: missing tensor 'mask_hidden'; expected shape [1, 1, {n}] "
                                  f"(num_aux_hidden_states * target_hidden_size) for parallel drafting "
                                  "(mode='parallel'). A plain EAGLE-3 head loads with mode='autoregressive'")
        return r
    if has_token == has_mask:
        return r
    if mode == "auto":
        what = (f"'mask_hidden' is missing from {wfile}" if has_token
                else f"{r.config_file} has no mask token")
        warnings.warn(f"{r.path}: {what}, so this head cannot draft in parallel; loading it as a plain EAGLE-3 "
                      "(autoregressive) head", stacklevel=3)
    tensors = {k: v for k, v in r.tensors.items() if k != "mask_hidden"}
    return dataclasses.replace(r, config=dataclasses.replace(cfg, mask_token_id=None, parallel_depth=1),
                               tensors=tensors)


def _structural(r: ReadResult, strict: bool) -> ReadResult:
    """Structural checks (errors raise; warnings only when strict); unknown tensors are dropped."""
    problems = check_structure(r.config, r.tensors, r.config_file, r.config.mask_token_id is not None)
    if strict:
        for p in problems:
            if p.level == "warning":
                warnings.warn(p.message, stacklevel=3)
    raise_first_error(problems)
    known = known_tensor_names(r.config)
    return dataclasses.replace(r, tensors={k: v for k, v in r.tensors.items() if k in known})


def _load_canonical(r: ReadResult, strict: bool) -> dict[str, Tensor]:
    known = known_tensor_names(r.config)
    r = dataclasses.replace(r, tensors={k: v for k, v in r.tensors.items() if k in known})
    data = load_tensors(list(r.tensors.values()))
    tensors = {name: data[rec.name] for name, rec in r.tensors.items()}
    if "mask_hidden" in tensors:
        tensors["mask_hidden"] = tensors["mask_hidden"].reshape(1, 1, -1)
    if "d2t" in tensors:
        tensors["d2t"] = tensors["d2t"].to(torch.int64)
    origin = {name: r.origin(name) for name in tensors}
    if strict:
        check_values(r.config, tensors, origin)
    elif "d2t" in tensors:
        check_d2t(r.config, tensors["d2t"], origin["d2t"])
    return tensors


def prepare(path: PathLike, mode: str = "auto", strict: bool = True) -> ReadResult:
    """Read a checkpoint's config and tensor directory, apply ``mode`` and run the structural checks
    (no tensor data is read). The result lists only the drafter's tensors (unknown ones dropped)."""
    return _structural(_resolve_mode(read_checkpoint(path), mode), strict)


def load_checked_tensors(r: ReadResult, strict: bool = True) -> dict[str, Tensor]:
    """The tensor data of a `prepare`d checkpoint under canonical names (``mask_hidden`` [1, 1, n],
    ``d2t`` int64), value-checked (finite weights when strict; d2t inside the target vocabulary)."""
    return _load_canonical(r, strict)


def load_into_drafter(drafter: Drafter, read: ReadResult, strict: bool = True,
                      exclude_prefixes: tuple[str, ...] = ()) -> set[str]:
    """Copy a `prepare`d checkpoint's tensors into an already built `Drafter` (a serving backend's module,
    built by its engine on the engine's device and dtype) - `load_drafter` without a target.

    Strict like `load_drafter` (structure checked by `prepare`, values by `load_checked_tensors`), except
    that the weights a head shares with its target may be absent: ``embed_tokens.weight`` /
    ``lm_head.weight`` then keep the module's values (the backend installs the target's); an absent
    ``d2t`` is the identity map (zeros) and an absent ``mask_hidden`` (plain EAGLE-3 head, K = 1 or
    autoregressive use only) is filled with NaN. Any other module tensor the checkpoint lacks, a checkpoint
    tensor the module lacks, or a size mismatch raises `CheckpointError` naming it.
    ``exclude_prefixes``: module state entries that are no drafter weights (the engine's attention layers).
    Returns the names of the loaded tensors (canonical): whether the head has its own shared weights.
    """
    tensors = load_checked_tensors(read, strict)
    state = {k: v for k, v in drafter.state_dict().items() if not k.startswith(tuple(exclude_prefixes))}
    optional = set(SHARED) | {"d2t"} | ({"mask_hidden"} if read.config.mask_token_id is None else set())
    missing = sorted(set(state) - set(tensors) - optional)
    if missing:
        raise CheckpointError(f"{read.path}: missing tensor(s) {missing}; expected every drafter weight")
    unexpected = sorted(set(tensors) - set(state))
    if unexpected:
        raise CheckpointError(f"{read.path}: tensor(s) {unexpected} are no weights of a pedagle Drafter")
    with torch.no_grad():
        for name, t in tensors.items():
            dst = state[name]
            if dst.numel() != t.numel():
                raise CheckpointError(f"{read.origin(name)} has shape {list(t.shape)}; expected {list(dst.shape)}")
            dst.copy_(t.reshape(dst.shape))
        if "d2t" not in tensors and "d2t" in state:
            state["d2t"].zero_()
        if "mask_hidden" not in tensors and "mask_hidden" in state:
            state["mask_hidden"].fill_(float("nan"))      # never read without a mask token
    return set(tensors)


# ---------------------------------------------------------------------------------------------- targets
@dataclass
class _Target:
    source: str
    vocab_size: int | None
    hidden_size: int | None
    embed: Tensor | None
    lm_head: Tensor | None


def _pick(names, exact: str, suffix: str) -> str | None:
    if exact in names:
        return exact
    found = sorted(n for n in names if n.endswith(suffix))
    return found[0] if found else None


def _target_from_dir(d: Path, need: list[str]) -> _Target:
    cf = d / "config.json"
    vocab = hidden = None
    tied = True
    if cf.is_file():
        try:
            tc = json.loads(cf.read_text())
        except ValueError as e:
            raise CheckpointError(f"{cf}: unreadable target config ({e}); expected a JSON object") from e
        text = tc.get("text_config") if isinstance(tc.get("text_config"), dict) else tc
        vocab, hidden = text.get("vocab_size", tc.get("vocab_size")), text.get("hidden_size", tc.get("hidden_size"))
        tied = bool(tc.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    stored = read_headers(d)
    e_name = _pick(stored, "model.embed_tokens.weight", "embed_tokens.weight")
    h_name = _pick(stored, "lm_head.weight", "lm_head.weight")
    want: dict[str, str] = {}
    if "embed_tokens.weight" in need or (h_name is None and "lm_head.weight" in need):
        if e_name is None:
            raise CheckpointError(f"{d}: the target stores no '*embed_tokens.weight'; expected "
                                  "'model.embed_tokens.weight' to share with the drafter")
        want["embed"] = e_name
    if "lm_head.weight" in need:
        if h_name is not None:
            want["lm_head"] = h_name
        elif not tied:
            raise CheckpointError(f"{d}: the target stores no 'lm_head.weight' and {cf.name} has "
                                  "tie_word_embeddings = false; expected an lm_head to share with the drafter")
    data = load_tensors([stored[n] for n in want.values()])
    embed = data.get(want.get("embed", ""))
    lm_head = data.get(want["lm_head"]) if "lm_head" in want else (embed if "lm_head.weight" in need else None)
    if vocab is None and embed is not None:
        vocab = embed.shape[0]
    if hidden is None and embed is not None:
        hidden = embed.shape[1]
    return _Target(str(d), vocab, hidden, embed if "embed_tokens.weight" in need else None, lm_head)


def _resolve_target(target: Any, need: list[str]) -> _Target:
    if isinstance(target, (str, os.PathLike)):
        d = Path(target)
        if d.is_file():
            d = d.parent
        if not d.is_dir():
            raise CheckpointError(f"{d}: target directory not found; expected a HF target model directory")
        return _target_from_dir(d, need)
    if isinstance(target, Mapping):
        def get(*names):
            for n in names:
                if n in target:
                    return target[n]
            return None
        embed = get("embed_tokens.weight", "model.embed_tokens.weight")
        lm_head = get("lm_head.weight")
        vocab = embed.shape[0] if embed is not None else (lm_head.shape[0] if lm_head is not None else None)
        hidden = embed.shape[1] if embed is not None else (lm_head.shape[1] if lm_head is not None else None)
        return _Target("target dict", vocab, hidden, embed, lm_head)
    if hasattr(target, "get_input_embeddings"):          # a transformers model
        conf = getattr(target, "config", None)
        text = getattr(conf, "text_config", None) or conf
        emb = target.get_input_embeddings().weight
        out = target.get_output_embeddings() if hasattr(target, "get_output_embeddings") else None
        return _Target(type(target).__name__, getattr(text, "vocab_size", emb.shape[0]),
                       getattr(text, "hidden_size", emb.shape[1]), emb.detach(),
                       out.weight.detach() if out is not None else None)
    raise CheckpointError(f"target = {type(target).__name__}; expected a HF target directory, a dict with "
                          "'embed_tokens.weight'/'lm_head.weight', or a transformers model")


def _shared_weights(r: ReadResult, target: Any) -> dict[str, Tensor]:
    """Check the target against the drafter config and take the weights the head shares with it."""
    cfg = r.config
    need = [n for n, own in zip(SHARED, (cfg.has_embed_tokens, cfg.has_lm_head)) if not own]
    if target is None:
        if need:
            raise CheckpointError(f"{r.path}: the head does not store {need} (it shares them with its target); "
                                  "expected a target: pass target=<HF target dir | {'embed_tokens.weight': ..., "
                                  "'lm_head.weight': ...}> to load_drafter")
        return {}
    t = _resolve_target(target, need)
    if t.vocab_size is not None and t.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{r.config_file}: vocab_size = {cfg.vocab_size} but the target ({t.source}) has "
                              f"vocab_size = {t.vocab_size}; expected the drafter's vocab_size to equal the target's")
    if t.hidden_size is not None and t.hidden_size != cfg.target_hidden_size:
        raise CheckpointError(f"{r.config_file}: target_hidden_size = {cfg.target_hidden_size} but the target "
                              f"({t.source}) has hidden_size = {t.hidden_size}; expected them to be equal")
    out: dict[str, Tensor] = {}
    if "embed_tokens.weight" in need:
        if t.embed is None:
            raise CheckpointError(f"{t.source}: no 'embed_tokens.weight'; expected the target's embeddings "
                                  f"[{cfg.vocab_size}, {cfg.hidden_size}] for a head that shares them")
        if tuple(t.embed.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise CheckpointError(f"{t.source}: tensor 'embed_tokens.weight' has shape {list(t.embed.shape)}; expected "
                                  f"[{cfg.vocab_size}, {cfg.hidden_size}] = [vocab_size, hidden_size] of "
                                  f"{r.config_file} to share it with the head")
        out["embed_tokens.weight"] = t.embed
    if "lm_head.weight" in need:
        if cfg.draft_vocab_size != cfg.vocab_size:
            raise CheckpointError(f"{r.path}: missing tensor 'lm_head.weight'; expected [{cfg.draft_vocab_size}, "
                                  f"{cfg.hidden_size}]: a head with draft_vocab_size = {cfg.draft_vocab_size} < "
                                  f"vocab_size = {cfg.vocab_size} must ship its own lm_head")
        if t.lm_head is None:
            raise CheckpointError(f"{t.source}: no 'lm_head.weight'; expected the target's lm_head "
                                  f"[{cfg.vocab_size}, {cfg.hidden_size}] for a head that shares it")
        if tuple(t.lm_head.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise CheckpointError(f"{t.source}: tensor 'lm_head.weight' has shape {list(t.lm_head.shape)}; expected "
                                  f"[{cfg.vocab_size}, {cfg.hidden_size}] = [vocab_size, hidden_size] of "
                                  f"{r.config_file}")
        out["lm_head.weight"] = t.lm_head
    for name, tensor in out.items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{t.source}: tensor '{name}' has non-finite values; expected finite weights")
    return out


# ---------------------------------------------------------------------------------------------- drafter
def _torch_dtype(code: str) -> torch.dtype:
    from .safetensors_io import TORCH_NAMES

    return getattr(torch, TORCH_NAMES[code])


def build_drafter(cfg: DrafterConfig, state: dict[str, Tensor], dtype: torch.dtype,
                  device: str | torch.device) -> Drafter:
    """A `Drafter` holding exactly ``state`` (no random initialisation: it is built on the meta device)."""
    with torch.device("meta"):
        model = Drafter(cfg)
    model = model.to_empty(device=device).to(dtype)
    full = dict(state)
    if "mask_hidden" not in full:       # plain EAGLE-3 head: never used (no mask token); poison, not zeros
        full["mask_hidden"] = torch.full((1, 1, cfg.fc_input_size), float("nan"))
    if "d2t" not in full:
        full["d2t"] = torch.zeros(cfg.draft_vocab_size, dtype=torch.int64)
    model.load_state_dict(full, strict=True)
    extra = set(dict(model.named_buffers())) - set(model.state_dict())
    if extra != {"inv_freq"}:          # another non-persistent buffer appeared in model.py: rebuild it here
        raise RuntimeError(f"pedagle_core.formats: unexpected non-persistent drafter buffers {sorted(extra)}")
    model.inv_freq = rope_inv_freq(cfg)[0].to(device)
    return model.eval()


def load_drafter(path: PathLike, target: Any = None, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu", strict: bool = True, mode: str = "auto") -> Drafter:
    """Load a drafter checkpoint (either format) into a `Drafter`.

    target: where shared weights come from (a HF target dir, a dict with 'embed_tokens.weight' /
        'lm_head.weight', or a transformers model); its vocabulary and hidden size are checked.
    dtype: the drafter's floating dtype; default the stored dtype of ``fc.weight``.
    strict: False skips the full scans (non-finite values) and the unknown-tensor warning; structural
        errors (missing tensor, shape, dtype, config disagreement) always raise.
    mode: 'parallel' requires ``mask_hidden`` and a mask token; 'autoregressive' accepts plain EAGLE-3
        heads; 'auto' (default) loads either, warning when a P-EAGLE head is incomplete.
    """
    r = prepare(path, mode, strict)
    shared = _shared_weights(r, target)
    tensors = _load_canonical(r, strict)
    tensors.update(shared)
    if dtype is None:
        dtype = _torch_dtype(r.tensors["fc.weight"].dtype)
    return build_drafter(r.config, tensors, dtype, device)


# ---------------------------------------------------------------------------------------------- writing
def _write(cfg: DrafterConfig, tensors: dict[str, Tensor], path: PathLike, fmt: str,
           verifier_name_or_path: str | None, verifier_architectures: list[str] | None = None) -> None:
    if fmt not in FORMATS:
        raise CheckpointError(f"format = {fmt!r}; expected one of {sorted(FORMATS)}")
    mod = FORMATS[fmt]
    dtype_name = str(tensors["fc.weight"].dtype).removeprefix("torch.")
    if fmt == "speculators":
        conf = mod.config_dict(cfg, dtype_name, verifier_name_or_path, verifier_architectures)
    else:
        conf = mod.config_dict(cfg, dtype_name, verifier_name_or_path)
    if cfg.draft_vocab_size == cfg.vocab_size:        # identity (checked): vLLM has no d2t then
        tensors = {k: v for k, v in tensors.items() if k != "d2t"}
    out = mod.tensor_dict(cfg, tensors)
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"{d}: exists and is not a directory; expected a checkpoint directory to write")
    d.mkdir(parents=True, exist_ok=True)
    clear_weights(d)
    write_safetensors(out, d / SINGLE_NAME, {"format": "pt", "pedagle_format": fmt})
    write_json(conf, d / "config.json")


def _cast(tensors: dict[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    if dtype is None:
        return tensors
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}


def drafter_tensors(drafter: Drafter) -> dict[str, Tensor]:
    """The tensors a checkpoint of ``drafter`` stores (canonical names)."""
    cfg = drafter.config
    out = {}
    for name, t in drafter.state_dict().items():
        if (name == "embed_tokens.weight" and not cfg.has_embed_tokens) or \
           (name == "lm_head.weight" and not cfg.has_lm_head) or \
           (name == "mask_hidden" and cfg.mask_token_id is None):
            continue
        if name == "d2t" and cfg.draft_vocab_size == cfg.vocab_size:
            check_d2t(cfg, t.cpu(), "drafter buffer 'd2t'")      # must be the identity: vLLM has no d2t then
            continue
        out[name] = t.detach().cpu()
    return out


def save_drafter(drafter: Drafter, path: PathLike, format: str = "vllm", verifier_name_or_path: str | None = None,
                 dtype: torch.dtype | None = None, verifier_architectures: list[str] | None = None) -> None:
    """Write ``drafter`` as a checkpoint: 'vllm' (canonical, served by stock vLLM) or 'speculators'.

    Shared weights (embed_tokens / lm_head) are written only if the drafter has its own
    (``config.has_embed_tokens`` / ``has_lm_head``); ``mask_hidden`` only with a mask token.
    """
    if format not in FORMATS:
        raise CheckpointError(f"format = {format!r}; expected one of {sorted(FORMATS)}")
    cfg = drafter.config
    tensors = _cast(drafter_tensors(drafter), dtype)
    check_values(cfg, tensors, {k: f"drafter tensor '{k}'" for k in tensors})
    _write(cfg, tensors, path, format, verifier_name_or_path, verifier_architectures)


def convert(src: PathLike, dst: PathLike, to: str, verifier_name_or_path: str | None = None,
            dtype: torch.dtype | None = None, strict: bool = True) -> None:
    """Rewrite a checkpoint in another (or the same) format, tensor for tensor: drafts do not change.

    Shared weights stay shared (no target needed). The verifier name defaults to the source's.
    """
    if to not in FORMATS:
        raise CheckpointError(f"--to = {to!r}; expected one of {sorted(FORMATS)}")
    if Path(src).resolve() == Path(dst).resolve():
        raise CheckpointError(f"{dst}: the destination is the source; expected another directory")
    r = prepare(src, "auto", strict)
    tensors = _cast(_load_canonical(r, strict), dtype)
    _write(r.config, tensors, dst, to, verifier_name_or_path or r.verifier_name_or_path, r.verifier_architectures)


DRAFTER_MARKERS = ("speculators_config", "speculators_model_type", "eagle_config", "eagle_aux_hidden_state_layer_ids",
                   "draft_vocab_size", "dflash_config", "pedagle")


def check_target_dir(path: PathLike, dtype_given: bool = False) -> None:
    """Checks of a target model directory before transformers loads it: a drafter checkpoint given as the
    target is refused by name (transformers would fail on mismatched sizes), and weights stored in another
    dtype than config.json says are reported (a warning; transformers casts them to the config's dtype)."""
    from .validate import _dtype_disagreement

    d = Path(path)
    cf = d / "config.json"
    try:
        raw = json.loads(cf.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cf}: cannot read it as JSON ({e}); expected a Hugging Face model config") from None
    marker = next((k for k in DRAFTER_MARKERS if isinstance(raw, dict) and k in raw), None)
    if marker is not None:
        raise CheckpointError(f"{cf}: field '{marker}' marks a drafter checkpoint, not a target model; pass it as "
                              "--drafter and the model it drafts for as --target")
    if dtype_given:
        return
    try:
        from .safetensors_io import read_headers

        stored = read_headers(d)
    except CheckpointError:
        return                               # no safetensors (e.g. .bin): transformers reports what it finds
    for p in _dtype_disagreement(cf, stored, "transformers casts them to the config's dtype unless --dtype is "
                                             "given"):
        warnings.warn(p.message, stacklevel=3)


def aux_layer_ids_field(path: PathLike) -> tuple[Path, str | None]:
    """(config file, the key holding the drafter's aux layer ids in it, or None), for messages."""
    p = Path(path)
    cf = p / "config.json" if p.is_dir() else p
    try:
        raw = json.loads(cf.read_text())
    except (OSError, ValueError):
        return cf, None
    if not isinstance(raw, dict):
        return cf, None
    if raw.get("eagle_aux_hidden_state_layer_ids") is not None:
        return cf, "eagle_aux_hidden_state_layer_ids"
    for outer, inner in (("eagle_config", "eagle_aux_hidden_state_layer_ids"), ("dflash_config", "target_layer_ids")):
        if isinstance(raw.get(outer), dict) and raw[outer].get(inner) is not None:
            return cf, f"{outer}.{inner}"
    return cf, None


def value_problems(path: PathLike) -> list[Problem]:
    """The value checks a load makes (finite weights, d2t inside the target vocabulary), every tensor, as
    `Problem`s (`pedagle inspect`). Nothing when the structure already has errors (they come first)."""
    r = read_checkpoint(path)
    if any(p.level == "error" for p in check_structure(r.config, r.tensors, r.config_file, False)):
        return []
    known = known_tensor_names(r.config)
    recs = {k: v for k, v in r.tensors.items() if k in known}
    data = load_tensors(list(recs.values()))
    out: list[Problem] = []
    for name, rec in sorted(recs.items()):
        t = data[rec.name]
        try:
            check_values(r.config, {name: t.to(torch.int64) if name == "d2t" else t}, {name: r.origin(name)})
        except CheckpointError as e:
            out.append(Problem("error", str(e)))
    return out


# ---------------------------------------------------------------------------------------------- describe
def describe(path: PathLike) -> dict[str, Any]:
    """Everything `pedagle inspect` shows: format, every DrafterConfig field, the tensors (headers only),
    missing shared weights and the problems a load would meet."""
    r = read_checkpoint(path)
    cfg = r.config
    problems: list[Problem] = check_structure(cfg, r.tensors, r.config_file, mask_hidden_required=False)
    can_parallel = cfg.mask_token_id is not None and "mask_hidden" in r.tensors
    if cfg.mask_token_id is not None and "mask_hidden" not in r.tensors:
        problems.append(Problem("warning", f"{r.path}: a mask token but no 'mask_hidden': loads only as a plain "
                                           "EAGLE-3 (autoregressive) head"))
    elif cfg.mask_token_id is None and "mask_hidden" in r.tensors:
        problems.append(Problem("warning", f"{r.config_file}: 'mask_hidden' but no mask token: loads only as a "
                                           "plain EAGLE-3 (autoregressive) head"))
    tensors = []
    for name, rec in sorted(r.tensors.items()):
        tensors.append({"name": name, "stored_name": rec.name, "file": rec.file.name, "shape": list(rec.shape),
                        "dtype": rec.torch_dtype})
    info: dict[str, Any] = {
        "path": str(r.path),
        "format": r.format,
        "config_file": str(r.config_file),
        "config": cfg.to_dict(),
        "mask_token": {"id": cfg.mask_token_id, "source": r.mask_token_source},
        "parallel_depth_recorded": r.parallel_depth_recorded,
        "modes": ["parallel", "autoregressive"] if can_parallel else ["autoregressive"],
        "verifier": {"name_or_path": r.verifier_name_or_path, "architectures": r.verifier_architectures},
        "num_parameters": sum(int(rec.numel) for rec in r.tensors.values() if DTYPES[rec.dtype][1] == "float"),
        "tensors": tensors,
        "ignored_tensors": sorted(r.ignored),
        "missing_shared_weights": [n for n, own in zip(SHARED, (cfg.has_embed_tokens, cfg.has_lm_head)) if not own],
        "problems": [{"level": p.level, "message": p.message} for p in problems],
    }
    if r.format == "vllm":
        # K: the trained depth when recorded; otherwise the user's choice (null here, "<K>" in the table)
        k = (cfg.parallel_depth if r.parallel_depth_recorded else None) if can_parallel else 3
        spec: dict[str, Any] = {"method": "eagle3", "model": str(r.path), "num_speculative_tokens": k}
        if can_parallel:
            spec["parallel_drafting"] = True
        info["vllm_speculative_config"] = spec
    return info


__all__ = ["CheckpointError", "detect_format", "read_config", "read_checkpoint", "prepare", "load_checked_tensors",
           "load_into_drafter", "load_drafter", "save_drafter", "convert", "describe", "build_drafter", "drafter_tensors", "read_header"]
