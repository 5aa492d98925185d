#!/usr/bin/env python3
"""Build pedagle's bundled tiny TARGET model (a Llama) and its tokenizer, reproducibly from a seed.

Everything is derived from the Python standard library of the interpreter that runs this script:

  1. corpus    the stdlib's ``*.py`` files (no site-packages / dist-packages, no test suites
               ``test/``, ``tests/``, ``idlelib/idle_test``, no file that is not valid UTF-8),
               sorted by relative path, split BY FILE from the seed: with
               ``r = int(sha1(f"{split_seed}:{relpath}"), 16) % heldout_mod`` (20), r == 0 is held out
               (final metrics, heldout_prompts), r == 1 is val (only picks the best checkpoint), the rest
               trains (tokenizer, model, train_prompts).
               Writes ``data_split.json``, ``heldout_prompts.jsonl`` and ``train_prompts.jsonl``
               (records ``{"prompt": str, "file": relpath}``; each prompt is a run of whole lines
               of one file, 64..192 tokens, ending with a newline).
  2. tokenizer byte-level BPE (Hugging Face ``tokenizers``), vocab 4096 including the special tokens
               ``<|endoftext|>`` (id 0: bos = eos = pad) and ``<|mask|>`` (id 1, reserved for P-EAGLE's
               mask token). The pre-tokenizer isolates every ``"\\n"``, so tokens never cross a line
               boundary: a prompt that ends at a line boundary tokenizes exactly as it does inside the
               file. Encoding with special tokens prepends ``<|endoftext|>`` (as in training, where every
               document follows one). Saved as ``tokenizer.json`` + ``tokenizer_config.json``.
  3. target    a Llama (``LlamaForCausalLM`` layout) trained with AdamW + warmup/cosine on packed
               sequences of the train files (documents separated by ``<|endoftext|>``), bf16 autocast
               on CUDA, fp32 on CPU; the weights with the best val loss (evaluated every 100 steps) are
               kept, and the run shortens itself if the timed steps say it would overrun
               ``--max-train-seconds``. The model is a small self-contained PyTorch Llama whose
               ``state_dict`` keys and ``config.json`` match Hugging Face's ``LlamaForCausalLM``
               exactly, so only torch + tokenizers + safetensors are needed (transformers is not).
               Saved in bf16 as ``model.safetensors`` (tied ``lm_head`` omitted, as HF does) with
               ``config.json`` / ``generation_config.json``: a standard HF directory that
               ``AutoModelForCausalLM`` / ``AutoTokenizer`` / vLLM load.

Logs: a tqdm progress bar, ``train_log.jsonl`` (one JSON object per event: train / eval / final),
``metrics.json`` (held-out loss / perplexity / bits-per-byte, timings, sizes), ``README.md``.

Typical GPU run (H100, a few minutes including tokenizer training and data prep):

    python scripts/build_tiny_target.py --out models/tiny-code/target --device cuda

CPU smoke run (a minute):

    python scripts/build_tiny_target.py --out /tmp/tiny-target --tiny --steps 30
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

EOT = "<|endoftext|>"
MASK = "<|mask|>"
EOT_ID = 0
MASK_ID = 1
SPECIAL_TOKENS = [EOT, MASK]  # ids 0 and 1, in this order

# GPT-2 style split, except that each "\n" is its own pre-token and the other whitespace classes
# exclude "\n": no token ever spans a line boundary (see the module docstring).
PRETOKENIZE_REGEX = (
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\n|[^\S\n]+(?!\S)|[^\S\n]+"
)

EXCLUDED_DIR_NAMES = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__")
# The val stream keeps at most this many tokens of each val file, so that one huge file
# (pydoc_data/topics.py, ~190k tokens of prose) does not decide the checkpoint selection alone.
VAL_DOC_MAX_TOKENS = 8192


# ----------------------------------------------------------------------------------------------
# small utilities
# ----------------------------------------------------------------------------------------------


class JsonlLog:
    """Appends one JSON object per line (``train_log.jsonl``), flushed per record."""

    def __init__(self, path: str | None):
        self.path = path
        self._fh = open(path, "w", encoding="utf-8") if path else None
        self.t0 = time.time()

    def __call__(self, event: str, **fields: Any) -> dict:
        rec = {"event": event, "time_s": round(time.time() - self.t0, 3), **fields}
        if self._fh:
            self._fh.write(json.dumps(rec) + "\n")
            self._fh.flush()
        return rec

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


def _progress(iterable=None, **kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a pedagle dependency, but the script must not die without it

        class tqdm:  # type: ignore[no-redef]
            def __init__(self, it=None, total=None, **_):
                self.it = it

            def __iter__(self):
                return iter(self.it)

            def update(self, n=1):
                pass

            def set_postfix(self, *a, **k):
                pass

            def close(self):
                pass

    return tqdm(iterable, **kw)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def _write_jsonl(path: str, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# 1. corpus and split
# ----------------------------------------------------------------------------------------------


def default_stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def is_excluded(relpath: str, extra_globs: Iterable[str] = ()) -> bool:
    parts = relpath.split("/")
    if any(p in EXCLUDED_DIR_NAMES for p in parts[:-1]):
        return True
    return any(fnmatch.fnmatch(relpath, g) for g in extra_globs)


def load_corpus(root: str, exclude: Iterable[str] = (), max_files: int | None = None) -> tuple[list[tuple[str, str]], dict]:
    """``[(relpath, text)]`` sorted by relpath (POSIX separators), plus counts of what was skipped.

    Text is strict UTF-8 with ``\\r\\n`` / ``\\r`` normalized to ``\\n``; empty files are skipped.
    ``max_files`` keeps an evenly spaced subset of the sorted list (for tiny runs and tests).
    """
    exclude = tuple(exclude)
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        reldir = os.path.relpath(dirpath, root)
        reldir = "" if reldir == "." else reldir.replace(os.sep, "/")
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIR_NAMES)
        for fn in filenames:
            if fn.endswith(".py"):
                rel = f"{reldir}/{fn}" if reldir else fn
                if not is_excluded(rel, exclude):
                    rels.append(rel)
    rels.sort()
    if max_files is not None and len(rels) > max_files:
        step = len(rels) / max_files
        rels = [rels[int(i * step)] for i in range(max_files)]
    docs, skipped = [], {"not_utf8": [], "empty": []}
    for rel in rels:
        with open(os.path.join(root, *rel.split("/")), "rb") as fh:
            raw = fh.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"].append(rel)
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            skipped["empty"].append(rel)
            continue
        docs.append((rel, text))
    return docs, skipped


def split_of(relpath: str, split_seed: int, heldout_mod: int) -> str:
    """'heldout' if sha1(f"{split_seed}:{relpath}") % mod == 0, 'val' if it is 1, else 'train'.

    'val' files are used only to pick the best checkpoint; 'heldout' files only for the final metrics
    and heldout_prompts.jsonl; the tokenizer, training and train_prompts.jsonl see 'train' files only.
    """
    r = int(hashlib.sha1(f"{split_seed}:{relpath}".encode("utf-8")).hexdigest(), 16) % heldout_mod
    return "heldout" if r == 0 else "val" if r == 1 else "train"


def make_split(relpaths: Iterable[str], split_seed: int, heldout_mod: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": [], "heldout": []}
    for rel in sorted(relpaths):
        out[split_of(rel, split_seed, heldout_mod)].append(rel)
    return out


# ----------------------------------------------------------------------------------------------
# 2. tokenizer
# ----------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Byte-level BPE with ``<|endoftext|>`` = 0 and ``<|mask|>`` = 1; encode() prepends ``<|endoftext|>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(EOT) == EOT_ID and tok.token_to_id(MASK) == MASK_ID, "special token ids moved"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, EOT_ID)]
    )
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "pad_token": EOT,
        "unk_token": None,
        "mask_token": MASK,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "left",
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": {
            str(EOT_ID): {"content": EOT, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
            str(MASK_ID): {"content": MASK, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
        },
    }


def save_tokenizer(tok, out_dir: str, model_max_length: int) -> None:
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config(model_max_length))
    _write_json(
        os.path.join(out_dir, "special_tokens_map.json"),
        {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT, "mask_token": MASK},
    )


def encode_docs(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, WITHOUT the ``<|endoftext|>`` prefix."""
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


# ----------------------------------------------------------------------------------------------
# 3. the self-contained Llama (HF LlamaForCausalLM layout)
# ----------------------------------------------------------------------------------------------


@dataclass
class TinyLlamaConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int = EOT_ID
    eos_token_id: int = EOT_ID
    pad_token_id: int = EOT_ID

    def to_hf_dict(self, dtype: str = "bfloat16") -> dict:
        """``config.json`` for transformers v4 (``rope_theta``, ``torch_dtype``) and v5 (``rope_parameters``, ``dtype``)."""
        d = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": self.initializer_range,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "mlp_bias": False,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": dtype,
            "dtype": dtype,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }
        try:
            import transformers

            d["transformers_version"] = transformers.__version__
        except ImportError:
            pass
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "TinyLlamaConfig":
        theta = d.get("rope_theta")
        if theta is None:
            theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        names = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in names and k != "rope_theta"}
        if kw.get("head_dim") is None:
            kw["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        return cls(rope_theta=float(theta), **kw)

    def num_parameters(self) -> int:
        h, i, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + emb + h


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # identical arithmetic to HF LlamaRMSNorm
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def rope_cos_sin(cfg: TinyLlamaConfig, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """HF 'default' rope: cos/sin of shape [T, head_dim] (computed in fp32, like HF)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=positions.device).float() / d))
    with torch.autocast(device_type=positions.device.type, enabled=False):
        freqs = positions.float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = (q * cos + _rotate_half(q) * sin).to(v.dtype)  # rope in cos/sin's dtype; back to v's (bf16 under autocast)
        k = (k * cos + _rotate_half(k) * sin).to(v.dtype)
        if self.nkv != self.nh:  # HF repeat_kv: kv head j serves query heads j*rep .. j*rep+rep-1
            rep = self.nh // self.nkv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.dropout = 0.0  # residual dropout, training only (not part of the saved model)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = self.self_attn(self.input_layernorm(x), cos, sin)
        x = x + F.dropout(a, self.dropout, self.training)
        m = self.mlp(self.post_attention_layernorm(x))
        return x + F.dropout(m, self.dropout, self.training)


class LlamaModel(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class TinyLlamaForCausalLM(nn.Module):
    """Minimal Llama whose ``state_dict()`` keys equal HF ``LlamaForCausalLM``'s (minus the tied ``lm_head.weight``)."""

    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def set_dropout(self, p: float) -> None:
        for layer in self.model.layers:
            layer.dropout = p

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                s = std
                if name.endswith(("o_proj.weight", "down_proj.weight")):  # GPT-2 style residual scaling
                    s = std / math.sqrt(2 * self.config.num_hidden_layers)
                with torch.no_grad():
                    p.normal_(0.0, s, generator=generator)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        cos, sin = rope_cos_sin(self.config, pos, x.dtype)  # like HF: in the embedding dtype
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.hidden_states(input_ids)
        w = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return F.linear(h, w)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self(input_ids)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1), reduction=reduction)

    def hf_state_dict(self, dtype: torch.dtype | None = torch.bfloat16) -> dict[str, torch.Tensor]:
        sd = {k: v.detach() for k, v in self.state_dict().items()}
        if dtype is not None:
            sd = {k: v.to(dtype) for k, v in sd.items()}
        return {k: v.contiguous().cpu() for k, v in sd.items()}

    def save_pretrained(self, out_dir: str, dtype: torch.dtype = torch.bfloat16) -> None:
        from safetensors.torch import save_file

        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "model.safetensors")
        save_file(self.hf_state_dict(dtype), path, metadata={"format": "pt"})
        os.chmod(path, 0o644)
        dtype_name = str(dtype).replace("torch.", "")
        _write_json(os.path.join(out_dir, "config.json"), self.config.to_hf_dict(dtype_name))
        _write_json(
            os.path.join(out_dir, "generation_config.json"),
            {"bos_token_id": self.config.bos_token_id, "eos_token_id": self.config.eos_token_id,
             "pad_token_id": self.config.pad_token_id, "do_sample": False},
        )

    @classmethod
    def from_pretrained(cls, out_dir: str, dtype: torch.dtype = torch.float32) -> "TinyLlamaForCausalLM":
        from safetensors.torch import load_file

        with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as fh:
            cfg = TinyLlamaConfig.from_hf_dict(json.load(fh))
        model = cls(cfg)
        sd = load_file(os.path.join(out_dir, "model.safetensors"))
        sd.pop("lm_head.weight", None) if cfg.tie_word_embeddings else None
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
        return model.to(dtype)


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------


def line_token_counts(tok, text: str) -> tuple[list[str], list[int]]:
    """Lines (each with its trailing ``\\n``) and their token counts. Because the pre-tokenizer isolates
    ``\\n``, token counts are additive over lines: tokens(a + b) == tokens(a) + tokens(b)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    counts = [len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False)] if lines else []
    return lines, counts


def sample_prompt(lines: list[str], counts: list[int], rng: random.Random, lo: int, hi: int, tries: int = 32) -> str | None:
    """A run of whole lines with lo..hi tokens (target length uniform in [lo, hi]) starting at a random non-blank line."""
    n = len(lines)
    if n == 0 or sum(counts) < lo:
        return None
    for _ in range(tries):
        target = rng.randint(lo, hi)
        start = rng.randrange(n)
        if not lines[start].strip():
            continue
        total, end = 0, start
        while end < n and total + counts[end] <= target:
            total += counts[end]
            end += 1
        if total >= lo and sum(1 for ln in lines[start:end] if ln.strip()) >= 3:
            return "".join(lines[start:end])
    return None


def make_prompts(tok, docs: dict[str, str], files: list[str], n: int, seed: int, lo: int, hi: int,
                 per_file_cap: int | None = None) -> list[dict]:
    """``n`` prompts, files visited round-robin in a seeded order (so prompts spread over files)."""
    rng = random.Random(seed)
    order = list(files)
    rng.shuffle(order)
    cache: dict[str, tuple[list[str], list[int]]] = {}
    out: list[dict] = []
    uses = {f: 0 for f in order}
    seen: set[str] = set()
    stalled = 0
    while len(out) < n and order and stalled < 3:
        progress = False
        for f in order:
            if len(out) >= n:
                break
            if per_file_cap is not None and uses[f] >= per_file_cap:
                continue
            if f not in cache:
                cache[f] = line_token_counts(tok, docs[f])
            p = sample_prompt(*cache[f], rng, lo, hi)
            if p is not None and p not in seen:
                seen.add(p)
                out.append({"prompt": p, "file": f})
                uses[f] += 1
                progress = True
        stalled = 0 if progress else stalled + 1
    return out


def make_train_prompts(tok, docs: dict[str, str], files: list[str], n: int, seed: int, lo: int, hi: int) -> list[dict]:
    """``n`` prompts from the train files, files drawn with probability proportional to their length."""
    rng = random.Random(seed)
    cum, acc = [], 0
    for f in files:
        acc += len(docs[f])
        cum.append(acc)
    cache: dict[str, tuple[list[str], list[int]]] = {}
    out, seen = [], set()
    attempts = 0
    while len(out) < n and attempts < 20 * n:
        attempts += 1
        f = rng.choices(files, cum_weights=cum)[0]
        if f not in cache:
            cache[f] = line_token_counts(tok, docs[f])
        p = sample_prompt(*cache[f], rng, lo, hi)
        if p is not None and p not in seen:
            seen.add(p)
            out.append({"prompt": p, "file": f})
    return out


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def pack_stream(doc_ids: list[list[int]]) -> torch.Tensor:
    """``<|endoftext|> doc0 <|endoftext|> doc1 ...`` as one int64 tensor."""
    total = sum(len(d) + 1 for d in doc_ids)
    out = torch.empty(total, dtype=torch.int64)
    i = 0
    for d in doc_ids:
        out[i] = EOT_ID
        out[i + 1 : i + 1 + len(d)] = torch.tensor(d, dtype=torch.int64)
        i += len(d) + 1
    return out


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def evaluate(model: TinyLlamaForCausalLM, stream: torch.Tensor, seq_len: int, batch_size: int, device: torch.device,
             max_seqs: int | None = None) -> dict:
    """Mean next-token loss over non-overlapping windows of ``stream`` (every token predicted once)."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    if max_seqs is not None:
        n = min(n, max_seqs)
    tot, cnt = 0.0, 0
    amp = device.type == "cuda"
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(n, s + batch_size)) * seq_len
        x = torch.stack([stream[i : i + seq_len] for i in idx.tolist()]).to(device)
        y = torch.stack([stream[i + 1 : i + 1 + seq_len] for i in idx.tolist()]).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            tot += model.loss(x, y, reduction="sum").item()
        cnt += y.numel()
    model.train()
    loss = tot / max(1, cnt)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": cnt, "nats": tot}


def sample_batch(stream: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    offs = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=gen)
    idx = offs[:, None] + torch.arange(seq_len + 1)[None, :]
    chunk = stream[idx]
    return chunk[:, :-1], chunk[:, 1:]


def train_model(model: TinyLlamaForCausalLM, train_stream: torch.Tensor, val_stream: torch.Tensor,
                heldout_stream: torch.Tensor, args, device: torch.device, log: JsonlLog) -> dict:
    """AdamW + warmup/cosine on random packed windows. With ``args.keep_best`` the weights with the lowest
    val loss (evaluated every ``args.eval_every`` steps and at the end) are restored at the end."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt_kw = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if device.type == "cuda":
        opt_kw["fused"] = True
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], **opt_kw)
    step_fn = model
    if args.compile:
        step_fn = torch.compile(model)
    amp = device.type == "cuda"
    model.train()
    model.set_dropout(args.dropout)
    tokens_per_step = args.batch_size * args.seq_len
    bar = _progress(total=args.steps, desc="train", unit="step", dynamic_ncols=True,
                    mininterval=0.5 if sys.stderr.isatty() else 15.0)  # keep logs short when not on a terminal
    t_start = time.time()
    t_last, tok_last = t_start, 0
    last = float("nan")
    eval_wall = 0.0
    warmup = min(args.warmup, max(1, args.steps // 10)) if args.steps < 10 * args.warmup else args.warmup
    best = {"val_loss": float("inf"), "step": 0, "state": None}
    evals = []

    def run_eval(step: int) -> None:
        ev_val = evaluate(model, val_stream, args.seq_len, args.batch_size, device, max_seqs=args.eval_max_seqs)
        ev_ho = evaluate(model, heldout_stream, args.seq_len, args.batch_size, device, max_seqs=args.eval_max_seqs)
        rec = log("eval", step=step, val_loss=round(ev_val["loss"], 5), heldout_loss=round(ev_ho["loss"], 5),
                  heldout_ppl=round(ev_ho["ppl"], 3))
        evals.append(rec)
        if ev_val["loss"] < best["val_loss"]:
            best.update(val_loss=ev_val["loss"], step=step)
            if args.keep_best:
                best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{last:.3f}", val=f"{ev_val['loss']:.3f}", heldout=f"{ev_ho['loss']:.3f}")

    x, y = sample_batch(train_stream, args.batch_size, args.seq_len, gen)
    probe_step, t_probe = 20, None  # steps timed to enforce --max-train-seconds: 20 .. 70
    step = 0
    while step < args.steps:
        if args.max_train_seconds and step == probe_step:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_probe = time.time()
        if args.max_train_seconds and t_probe is not None and step == probe_step + 50:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t_probe - eval_wall) / 50
            fit = max(step + 1, int((args.max_train_seconds - (time.time() - t_start)) / per_step) + step)
            if fit < args.steps:
                log("replan", step=step, old_steps=args.steps, new_steps=fit, s_per_step=round(per_step, 5),
                    reason=f"{args.steps} steps would exceed --max-train-seconds {args.max_train_seconds}")
                print(f"[build_tiny_target] {per_step * 1e3:.1f} ms/step: shortening the run to {fit} steps to stay "
                      f"within --max-train-seconds {args.max_train_seconds}", flush=True)
                args.steps = fit
                bar.total = args.steps
                bar.refresh()
        lr = lr_at(step, args.steps, args.lr, warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        xd, yd = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = step_fn(xd)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), yd.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        if step + 1 < args.steps:
            x, y = sample_batch(train_stream, args.batch_size, args.seq_len, gen)  # overlaps the GPU step
        bar.update(1)
        is_log = (step + 1) % args.log_every == 0 or step == 0 or step + 1 == args.steps
        if is_log:
            last = loss.item()
            now = time.time()
            done_tokens = (step + 1) * tokens_per_step
            tps = (done_tokens - tok_last) / max(1e-9, now - t_last)
            t_last, tok_last = now, done_tokens
            log("train", step=step + 1, loss=round(last, 5), lr=lr, grad_norm=round(float(gnorm), 4),
                tokens=done_tokens, tokens_per_s=round(tps, 1))
            bar.set_postfix(loss=f"{last:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            t_eval = time.time()
            run_eval(step + 1)
            eval_wall += time.time() - t_eval
            t_last = time.time()  # do not count eval time in tokens/s
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - t_start - eval_wall
    model.set_dropout(0.0)
    run_eval(args.steps)
    bar.close()
    final_val = evals[-1]["val_loss"]
    if args.keep_best and best["state"] is not None and best["step"] != args.steps:
        model.load_state_dict(best["state"])
    log("selected", step=best["step"] if args.keep_best else args.steps, best_val_loss=round(best["val_loss"], 5),
        final_val_loss=final_val, keep_best=args.keep_best)
    return {"train_wall_s": wall, "train_tokens": args.steps * tokens_per_step,
            "train_tokens_per_s": args.steps * tokens_per_step / max(1e-9, wall), "final_train_loss": last,
            "selected_step": best["step"] if args.keep_best else args.steps, "best_val_loss": best["val_loss"],
            "final_val_loss": final_val, "best_val_step": best["step"]}


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

FULL = dict(hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2, head_dim=64, intermediate_size=512,
            vocab_size=4096, seq_len=512, batch_size=64, steps=3000, lr=3e-3, warmup=200, max_files=None,
            num_train_prompts=4096, num_heldout_prompts=64, eval_every=100, eval_max_seqs=None)
TINY = dict(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=64, intermediate_size=256,
            vocab_size=4096, seq_len=128, batch_size=8, steps=30, lr=3e-3, warmup=5, max_files=120,
            num_train_prompts=64, num_heldout_prompts=16, eval_every=0, eval_max_seqs=64)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_tiny_target.py",
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults in [brackets] are the full (GPU) preset; --tiny switches every unset one to a "
               "CPU-smoke preset: " + ", ".join(f"{k}={v}" for k, v in TINY.items()),
    )
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output directory (a standard HF model dir; created if missing)")
    g.add_argument("--seed", type=int, default=0, help="seed of everything: split, tokenizer-independent sampling, init, batches [0]")
    g.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cuda', 'cuda:N' or 'cpu' [auto]")
    g.add_argument("--tiny", action="store_true", help="CPU smoke preset (small model, subset of files, short sequences)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training (off by default: eager is already fast for this size "
                        "and compile time would eat most of the budget)")
    g = p.add_argument_group("data")
    g.add_argument("--stdlib", default=None, help="corpus root [sysconfig.get_paths()['stdlib'] of this interpreter]")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="extra fnmatch glob of relative paths to leave out (repeatable), e.g. 'encodings/cp*.py'")
    g.add_argument("--max-files", type=int, default=None, help="keep an evenly spaced subset of files [all]")
    g.add_argument("--split-seed", type=int, default=None, help="seed of the by-file split [--seed]")
    g.add_argument("--heldout-mod", type=int, default=20, help="by-file split: r = int(sha1(f'{split_seed}:{relpath}'), 16) %% MOD; "
                   "r == 0: held-out, r == 1: val (checkpoint selection only), else train [20]")
    g.add_argument("--num-train-prompts", type=int, default=None, help="prompts in train_prompts.jsonl [4096]")
    g.add_argument("--num-heldout-prompts", type=int, default=None, help="prompts in heldout_prompts.jsonl [64]")
    g.add_argument("--prompt-min-tokens", type=int, default=64, help="shortest prompt in tokens (no bos) [64]")
    g.add_argument("--prompt-max-tokens", type=int, default=192, help="longest prompt in tokens (no bos) [192]")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--vocab-size", type=int, default=None, help="BPE vocab incl. the 2 special tokens [4096]")
    g = p.add_argument_group("model")
    g.add_argument("--hidden-size", type=int, default=None, help="[256]")
    g.add_argument("--num-layers", type=int, default=None, help="[8]")
    g.add_argument("--num-heads", type=int, default=None, help="[4]")
    g.add_argument("--num-kv-heads", type=int, default=None, help="[2]")
    g.add_argument("--head-dim", type=int, default=None, help="[64] (vLLM's CPU attention rejects 16)")
    g.add_argument("--intermediate-size", type=int, default=None, help="[512] (768 would make the bf16 weights ~14.7 MB)")
    g.add_argument("--max-position-embeddings", type=int, default=2048, help="[2048]")
    g.add_argument("--rope-theta", type=float, default=10000.0, help="[10000]")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps [3000]")
    g.add_argument("--batch-size", type=int, default=None, help="sequences per step [64]")
    g.add_argument("--seq-len", type=int, default=None, help="packed sequence length [512]")
    g.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate [3e-3]")
    g.add_argument("--warmup", type=int, default=None, help="linear warmup steps, then cosine [200]")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr [0.1]")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices [0.1]")
    g.add_argument("--dropout", type=float, default=0.1, help="residual dropout during training only (the corpus is "
                   "small: ~3.1M train tokens, seen ~30 times by the default run) [0.1]")
    g.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip [1.0]")
    g.add_argument("--log-every", type=int, default=25, help="train_log.jsonl cadence in steps [25]")
    g.add_argument("--max-train-seconds", type=float, default=None,
                   help="wall-clock cap on the training loop: steps 20..70 are timed and, if --steps would not fit, "
                        "the run (and its cosine schedule) is shortened to fit; 0 = no cap [210 (CUDA) / 0 (CPU)]")
    g.add_argument("--eval-every", type=int, default=None, help="val + held-out eval cadence in steps, 0 = only at the end [100]")
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=True,
                   help="save the weights with the lowest VAL loss seen at an eval, not the last ones [on]")
    g.add_argument("--eval-max-seqs", type=int, default=None, help="cap on held-out windows per eval [all]")
    return p


def resolve_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    preset = TINY if args.tiny else FULL
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.split_seed is None:
        args.split_seed = args.seed
    if args.max_train_seconds is None:
        args.max_train_seconds = 210.0 if (args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())) else 0.0
    if args.num_heads * args.head_dim <= 0 or args.num_heads % args.num_kv_heads:
        raise SystemExit("--num-heads must be a multiple of --num-kv-heads")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    return dev


def write_readme(out: str, args, metrics: dict, cfg: TinyLlamaConfig, cmd: str) -> None:
    m = metrics
    text = f"""# pedagle tiny-code target

A small Llama (`LlamaForCausalLM` layout) trained on the Python {m['python_version']} standard library, built by
`scripts/build_tiny_target.py` of pedagle. It is the target model of pedagle's bundled tiny model family
(drafters are trained from it separately).

| | |
|---|---|
| architecture | LlamaForCausalLM, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads x {cfg.head_dim}, {cfg.num_key_value_heads} KV heads, intermediate {cfg.intermediate_size}, tied embeddings |
| parameters | {m['num_parameters']:,} ({m['weights_bytes'] / 1e6:.2f} MB in bf16) |
| vocab | {cfg.vocab_size} byte-level BPE |
| special tokens | `{EOT}` = {EOT_ID} (bos = eos = pad), `{MASK}` = **{MASK_ID}** (P-EAGLE mask token, never seen in training) |
| context | trained on {args.seq_len}-token packed windows; `max_position_embeddings` {cfg.max_position_embeddings} |
| training | {args.steps} steps x {args.batch_size} x {args.seq_len} tokens (~{m['train_epochs']:.1f} epochs of {m['corpus_train_tokens']:,} tokens), AdamW lr {args.lr} (warmup + cosine), dropout {args.dropout}, seed {args.seed}, on {m['device']}; weights of step {m['selected_step']} kept (best val loss {m['best_val_loss']:.4f}; last step {m['final_val_loss']:.4f}) |
| held-out loss | **{m['heldout_loss']:.4f}** nats/token (perplexity {m['heldout_ppl']:.2f}, {m['heldout_bits_per_byte']:.3f} bits/byte) over {m['heldout_tokens']:,} tokens of {m['n_heldout_files']} held-out files |

Tokenization: the pre-tokenizer isolates every newline, so no token crosses a line boundary; encoding with
special tokens (the default) prepends `{EOT}`, as in training where every file follows one.
`tokenizer.mask_token_id` is {MASK_ID}.

Files: `data_split.json` (by-file train/held-out split of the stdlib, Python version), `heldout_prompts.jsonl`
and `train_prompts.jsonl` (`{{"prompt", "file"}}` chunks of whole lines, {args.prompt_min_tokens}-{args.prompt_max_tokens} tokens),
`train_log.jsonl`, `metrics.json`.

Rebuild:

```
{cmd}
```
"""
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> dict:
    args = resolve_args(argv)
    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls left outside autocast
    os.makedirs(args.out, exist_ok=True)
    log = JsonlLog(os.path.join(args.out, "train_log.jsonl"))
    cmd = "python scripts/build_tiny_target.py " + " ".join(sys.argv[1:] if argv is None else argv)
    log("start", argv=(sys.argv[1:] if argv is None else list(argv)), python=platform.python_version(),
        torch=torch.__version__, device=str(device))
    timings: dict[str, float] = {}

    # 1. corpus + split -------------------------------------------------------------------------
    t = time.time()
    root = args.stdlib or default_stdlib_root()
    docs_list, skipped = load_corpus(root, args.exclude, args.max_files)
    docs = dict(docs_list)
    split = make_split(docs, args.split_seed, args.heldout_mod)
    if not split["heldout"] or not split["train"] or not split["val"]:
        raise SystemExit(f"empty split: {len(split['train'])} train / {len(split['val'])} val / "
                         f"{len(split['heldout'])} held-out files")
    _write_json(os.path.join(args.out, "data_split.json"), {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib_root": root,
        "rule": f"r = int(sha1(f'{{split_seed}}:{{relpath}}').hexdigest(), 16) % {args.heldout_mod}; "
                "heldout iff r == 0, val iff r == 1, else train",
        "split_seed": args.split_seed,
        "heldout_mod": args.heldout_mod,
        "val_doc_max_tokens": VAL_DOC_MAX_TOKENS,
        "exclude_dirs": list(EXCLUDED_DIR_NAMES),
        "exclude_globs": list(args.exclude),
        "max_files": args.max_files,
        "skipped": skipped,
        "n_train": len(split["train"]),
        "n_val": len(split["val"]),
        "n_heldout": len(split["heldout"]),
        "train": split["train"],
        "val": split["val"],
        "heldout": split["heldout"],
    })
    timings["corpus_s"] = time.time() - t
    log("corpus", n_files=len(docs), n_train=len(split["train"]), n_val=len(split["val"]), n_heldout=len(split["heldout"]),
        chars=sum(len(v) for v in docs.values()), skipped={k: len(v) for k, v in skipped.items()})

    # 2. tokenizer (trained on the train files only) -----------------------------------------------
    t = time.time()
    tok = train_tokenizer((docs[f] for f in split["train"]), vocab_size=args.vocab_size)
    save_tokenizer(tok, args.out, args.max_position_embeddings)
    timings["tokenizer_s"] = time.time() - t
    log("tokenizer", vocab_size=tok.get_vocab_size(), seconds=round(timings["tokenizer_s"], 2))

    t = time.time()
    train_ids = encode_docs(tok, [docs[f] for f in split["train"]])
    val_ids = encode_docs(tok, [docs[f] for f in split["val"]])
    heldout_ids = encode_docs(tok, [docs[f] for f in split["heldout"]])
    train_stream, heldout_stream = pack_stream(train_ids), pack_stream(heldout_ids)
    val_stream = pack_stream([d[:VAL_DOC_MAX_TOKENS] for d in val_ids])
    heldout_bytes = sum(len(docs[f].encode("utf-8")) for f in split["heldout"])
    train_bytes = sum(len(docs[f].encode("utf-8")) for f in split["train"])
    timings["encode_s"] = time.time() - t
    log("encode", train_tokens=len(train_stream), val_tokens=len(val_stream), heldout_tokens=len(heldout_stream),
        train_bytes_per_token=round(train_bytes / len(train_stream), 3))

    t = time.time()
    lo, hi = args.prompt_min_tokens, args.prompt_max_tokens
    heldout_prompts = make_prompts(tok, docs, split["heldout"], args.num_heldout_prompts, args.seed + 2, lo, hi)
    train_prompts = make_train_prompts(tok, docs, split["train"], args.num_train_prompts, args.seed + 3, lo, hi)
    _write_jsonl(os.path.join(args.out, "heldout_prompts.jsonl"), heldout_prompts)
    _write_jsonl(os.path.join(args.out, "train_prompts.jsonl"), train_prompts)
    timings["prompts_s"] = time.time() - t
    log("prompts", heldout=len(heldout_prompts), train=len(train_prompts))

    # 3. model --------------------------------------------------------------------------------------
    cfg = TinyLlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads, num_key_value_heads=args.num_kv_heads,
        head_dim=args.head_dim, max_position_embeddings=args.max_position_embeddings, rope_theta=args.rope_theta,
    )
    model = TinyLlamaForCausalLM(cfg)
    model.init_weights(torch.Generator().manual_seed(args.seed))
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log("model", num_parameters=n_params, config=asdict(cfg))
    print(f"[build_tiny_target] {len(split['train'])} train / {len(split['val'])} val / {len(split['heldout'])} held-out "
          f"files, {len(train_stream):,} / {len(val_stream):,} / {len(heldout_stream):,} tokens; "
          f"model {n_params:,} params on {device}", flush=True)

    t = time.time()
    tr = train_model(model, train_stream, val_stream, heldout_stream, args, device, log)
    timings["train_s"] = time.time() - t

    t = time.time()
    ev = evaluate(model, heldout_stream, args.seq_len, args.batch_size, device, max_seqs=args.eval_max_seqs)
    # held-out loss of the weights as SAVED (rounded to bf16; evaluated like the fp32 master: autocast on CUDA)
    saved = TinyLlamaForCausalLM(cfg)
    saved.load_state_dict({k: v.float() for k, v in model.hf_state_dict(torch.bfloat16).items()})
    saved.to(device)
    ev_bf16 = evaluate(saved, heldout_stream, args.seq_len, args.batch_size, device, max_seqs=args.eval_max_seqs)
    del saved
    timings["eval_s"] = time.time() - t
    frac = ev["tokens"] / max(1, len(heldout_stream) - 1)
    bpb = ev_bf16["nats"] / math.log(2) / max(1, heldout_bytes * frac)

    model.cpu()
    model.save_pretrained(args.out, dtype=torch.bfloat16)
    weights_bytes = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    timings["total_s"] = time.time() - t0
    metrics = {
        "heldout_loss": ev_bf16["loss"],
        "heldout_ppl": ev_bf16["ppl"],
        "heldout_bits_per_byte": bpb,
        "heldout_loss_fp32_master": ev["loss"],
        "heldout_tokens": ev["tokens"],
        "final_train_loss": tr["final_train_loss"],
        "selected_step": tr["selected_step"],
        "best_val_step": tr["best_val_step"],
        "best_val_loss": tr["best_val_loss"],
        "final_val_loss": tr["final_val_loss"],
        "train_tokens": tr["train_tokens"],
        "train_tokens_per_s": tr["train_tokens_per_s"],
        "train_epochs": tr["train_tokens"] / len(train_stream),
        "corpus_train_tokens": len(train_stream),
        "corpus_heldout_tokens": len(heldout_stream),
        "n_train_files": len(split["train"]),
        "n_val_files": len(split["val"]),
        "n_heldout_files": len(split["heldout"]),
        "num_parameters": n_params,
        "weights_bytes": weights_bytes,
        "mask_token": MASK,
        "mask_token_id": MASK_ID,
        "eos_token_id": EOT_ID,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "seed": args.seed,
        "args": {k: v for k, v in vars(args).items()},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    log("final", heldout_loss=round(ev_bf16["loss"], 5), heldout_ppl=round(ev_bf16["ppl"], 3),
        heldout_bits_per_byte=round(bpb, 4), heldout_loss_fp32_master=round(ev["loss"], 5),
        train_tokens_per_s=round(tr["train_tokens_per_s"], 1), timings_s=metrics["timings_s"])
    log.close()
    write_readme(args.out, args, metrics, cfg, cmd)
    print(f"[build_tiny_target] held-out loss {ev_bf16['loss']:.4f} (ppl {ev_bf16['ppl']:.2f}, {bpb:.3f} bits/byte); "
          f"{tr['train_tokens_per_s']:,.0f} train tokens/s; total {timings['total_s']:.1f} s -> {args.out}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
