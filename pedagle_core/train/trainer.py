"""The trainer: target -> regenerated documents -> draft vocabulary -> drafter -> COD training steps.

Layout of ``out`` (``work_dir`` defaults to ``out/train``)::

    out/                      the final drafter in the canonical (vLLM-loadable) format (formats.save_drafter)
    work_dir/args.json        the TrainConfig of the run
    work_dir/sequences.jsonl  the target-regenerated training documents (+ sequences.meta.json)
    work_dir/metrics.jsonl    one line per logged step (loss, per-depth top-1 accuracy, lr, throughput, eval)
    work_dir/checkpoints/step-NNNNNNN/   canonical drafter + train_state.pt (model, optimizer, scheduler)

One optimizer step = ``grad_accum`` packed sequences per rank; packed sequence number
``g = (step * grad_accum + a) * world_size + rank`` and its COD sample is seeded from (seed, g), so a
run is a pure function of the config (resume == uninterrupted; W ranks == 1 rank with W-fold
accumulation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import DrafterConfig
from ..model import Drafter, RMSNorm
from . import data as D
from .cod import sample_cod
from .distributed import (DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup, full_state,
                          grad_sync_fn, init_distributed, load_full_state, wrap_model)
from .mask import default_backend
from .module import TrainableDrafter, export_state_dict
from .partition import pack_shape, run_pack
from .ttt import run_pack_ttt
from .vocab import count_tokens, draft_to_target_ids, resolve_mask_token_id, select_draft_vocab

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64, "float64": torch.float64}


@dataclass
class TrainConfig:
    target: str
    out: str
    data: str | None = None
    depth: int = 8                       # K: depths 0..K-1 (parallel mode)
    layers: int = 4
    mode: str = "parallel"               # parallel (P-EAGLE) | autoregressive (EAGLE-3)
    ttt_steps: int = 1                   # autoregressive: steps trained on the drafter's own fed-back hidden
                                         # (1 = next-token training only; >1 = test-time training, ttt.py)
    draft_vocab: int | None = None
    mask_token_id: int | None = None
    steps: int = 1000
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    clip: float = 1.0
    seq_len: int = 2048
    segments: int = 1
    grad_accum: int = 1
    regen: str = "greedy"
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    regen_batch: int = 32
    feature_batch: int = 8
    max_prompts: int | None = None
    max_prompt_len: int | None = None
    chat_template: str = "auto"
    supervise_prompt: bool = False
    cache_dir: str | None = None
    prepare_only: bool = False
    save_every: int = 0
    resume: bool = False
    stop_after: int | None = None        # stop after this many steps of this invocation (tests, preemption drills)
    device: str | None = None
    dtype: str = "bf16"                  # bf16/fp16: fp32 params + autocast; fp32/fp64: that precision throughout
    target_dtype: str = "auto"
    save_dtype: str = "bf16"
    seed: int = 0
    distributed: str = "none"            # none | ddp | fsdp
    attention: str = "auto"              # auto | sdpa | flex
    cod_ratio: float = 0.7
    cod_ratio_min: float = 0.2
    depth_weights: list[float] | None = None
    aux_layers: list[int] | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    init_std: float = 0.02
    train_embeddings: bool = False
    eval_data: str | None = None
    eval_every: int = 0
    max_eval_prompts: int | None = 64
    log_every: int = 1
    tensorboard: bool = False
    progress: bool = True
    work_dir: str | None = None
    save_format: str = "vllm"

    def __post_init__(self) -> None:
        if self.mode not in ("parallel", "autoregressive"):
            raise ValueError(f"--mode = {self.mode!r}; expected 'parallel' or 'autoregressive'")
        if self.mode == "autoregressive":
            # the COD depth axis holds the autoregressive steps (step j = chain depth j)
            self.depth = max(1, int(self.ttt_steps))
            if self.depth > 1 and self.segments != 1:
                raise ValueError("--ttt-steps > 1 runs its steps one after another: use --segments 1")
        if self.depth < 1 or self.segments < 1 or self.grad_accum < 1 or self.seq_len < 2:
            raise ValueError("--depth, --segments, --grad-accum must be >= 1 and --seq-len >= 2")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype = {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if self.depth_weights is not None and len(self.depth_weights) != self.depth:
            raise ValueError(f"--depth-weights has {len(self.depth_weights)} entries; expected --depth = {self.depth}")

    @property
    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.out) / "train"


# ------------------------------------------------------------------------------------------- helpers
def _text_config(cfg):
    return getattr(cfg, "text_config", None) or cfg


def load_target(path: str, device: torch.device, dtype: str = "auto"):
    from transformers import AutoModelForCausalLM
    if dtype == "auto":
        dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dt = DTYPES[dtype]
    target = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(device).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    tok = None
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 - a target without a tokenizer (pre-tokenised data) is fine
        tok = None
    return target, tok


def rope_parameters_of(tc) -> dict:
    rp = getattr(tc, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        rp = dict(rp)
        if "full_attention" in rp and isinstance(rp["full_attention"], dict):
            rp = dict(rp["full_attention"])
    else:
        rp = {"rope_type": "default", "rope_theta": float(getattr(tc, "rope_theta", 10000.0))}
        rs = getattr(tc, "rope_scaling", None)
        if isinstance(rs, dict):
            rp.update(rs)
            rp["rope_type"] = rs.get("rope_type", rs.get("type", "default"))
    rp.setdefault("rope_type", "default")
    return rp


def drafter_config_from_target(tc, cfg: TrainConfig, aux_ids, draft_vocab: int, mask_token_id: int | None) -> DrafterConfig:
    tc = _text_config(tc)
    H = cfg.hidden_size or tc.hidden_size
    heads = cfg.num_heads or tc.num_attention_heads
    kv = cfg.num_kv_heads or getattr(tc, "num_key_value_heads", None) or heads
    head_dim = cfg.head_dim or getattr(tc, "head_dim", None) or H // heads
    return DrafterConfig(
        hidden_size=H, num_hidden_layers=cfg.layers, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=head_dim, intermediate_size=cfg.intermediate_size or tc.intermediate_size,
        vocab_size=tc.vocab_size, draft_vocab_size=draft_vocab, target_hidden_size=tc.hidden_size,
        aux_layer_ids=tuple(aux_ids), mask_token_id=mask_token_id,
        parallel_depth=cfg.depth if cfg.mode == "parallel" else 1,
        rms_norm_eps=float(getattr(tc, "rms_norm_eps", 1e-6)), rope_parameters=rope_parameters_of(tc),
        max_position_embeddings=int(getattr(tc, "max_position_embeddings", 2048)),
        architecture="qwen3" if getattr(tc, "model_type", "") == "qwen3" else "llama",
        attention_bias=bool(getattr(tc, "attention_bias", False)),
    )


@torch.no_grad()
def init_drafter(dcfg: DrafterConfig, target, d2t: Tensor, std: float, seed: int) -> Drafter:
    """A fresh drafter: normal(0, std) linears, unit norms, mask_hidden ~ N(0, 1) (as speculators),
    embeddings / lm_head (draft-vocabulary rows) / final norm copied from the target where shapes agree."""
    torch.manual_seed(seed)
    dr = Drafter(dcfg)
    for mod in dr.modules():
        if isinstance(mod, RMSNorm):
            mod.weight.fill_(1.0)
        elif isinstance(mod, (nn.Linear, nn.Embedding)):
            mod.weight.normal_(0.0, std)
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
    dr.mask_hidden.normal_(0.0, 1.0)
    dr.d2t.copy_(d2t)
    emb = target.get_input_embeddings().weight
    if emb.shape == dr.embed_tokens.weight.shape:
        dr.embed_tokens.weight.copy_(emb.float())
    head = target.get_output_embeddings()
    if head is not None and head.weight.shape[1] == dcfg.hidden_size:
        dr.lm_head.weight.copy_(head.weight[draft_to_target_ids(d2t).to(head.weight.device)].float())
        base = D.target_base_model(target)
        tn = getattr(base, "norm", None)
        if tn is not None and getattr(tn, "weight", None) is not None and tn.weight.shape == dr.norm.weight.shape:
            dr.norm.weight.copy_(tn.weight.float())
    return dr


def lr_lambda(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def save_serving(drafter: Drafter, path: Path, fmt: str = "vllm", verifier: str | None = None) -> str:
    """The canonical checkpoint via ``pedagle_core.formats.save_drafter`` (a plain safetensors +
    pedagle config fallback while the formats module is not available)."""
    try:
        from ..formats import save_drafter  # type: ignore[attr-defined]
    except ImportError:
        save_drafter = None
    path.mkdir(parents=True, exist_ok=True)
    if save_drafter is not None:
        save_drafter(drafter, str(path), format=fmt, verifier_name_or_path=verifier)
        return fmt
    from safetensors.torch import save_file
    warnings.warn("pedagle_core.formats.save_drafter is not available: writing the fallback layout "
                  "(model.safetensors + pedagle_config.json)", stacklevel=2)
    sd = {k: v.detach().cpu().contiguous() for k, v in drafter.state_dict().items()}
    save_file(sd, str(path / "model.safetensors"))
    (path / "pedagle_config.json").write_text(drafter.config.to_json())
    return "fallback"


def latest_checkpoint(work: Path) -> Path | None:
    ck = sorted((work / "checkpoints").glob("step-*/train_state.pt"))
    return ck[-1].parent if ck else None


# ------------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: TrainConfig, target=None, tokenizer=None) -> None:
        self.cfg = cfg
        self.info: DistInfo = init_distributed(cfg.distributed, cfg.device)
        self.device = self.info.device
        self._target, self._tokenizer = target, tokenizer
        self.metrics_file = None
        self.tb = None

    # ---------------------------------------------------------------- logging
    def log(self, rec: dict) -> None:
        if not self.info.is_main:
            return
        if self.metrics_file is None:
            self.cfg.work.mkdir(parents=True, exist_ok=True)
            self.metrics_file = (self.cfg.work / "metrics.jsonl").open("a")
        self.metrics_file.write(json.dumps(rec) + "\n")
        self.metrics_file.flush()
        if self.tb is not None and "step" in rec:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
                elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                    for i, x in enumerate(v):
                        self.tb.add_scalar(f"{k}/{i}", x, rec["step"])

    # ---------------------------------------------------------------- data
    def target(self):
        if self._target is None:
            self._target, tok = load_target(self.cfg.target, self.device, self.cfg.target_dtype)
            if self._tokenizer is None:
                self._tokenizer = tok
        return self._target

    def _documents(self, data_path: str | None, seq_file: Path, limit: int | None, seed: int) -> list[dict]:
        """The regenerated documents: reused from ``seq_file`` when it was made from the same data and
        settings (or when no --data is given, or on --resume), else regenerated and written there."""
        cfg, info = self.cfg, self.info
        meta = {"data": (os.path.abspath(data_path) if data_path and not data_path.startswith("hf:") else data_path),
                "target": os.path.abspath(cfg.target), "regen": cfg.regen, "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": seed, "limit": limit,
                "chat_template": cfg.chat_template, "max_prompt_len": cfg.max_prompt_len}
        meta_file = seq_file.with_suffix(".meta.json")
        if seq_file.exists():
            same = meta_file.exists() and json.loads(meta_file.read_text()) == meta
            if same or data_path is None or cfg.resume:
                return D.load_documents(seq_file)
        if data_path is None:
            raise ValueError(f"--data is required ({seq_file} does not exist yet)")
        target = self.target()
        recs = D.load_prompt_records(data_path, limit)
        prompts = D.tokenize_prompts(recs, self._tokenizer, cfg.chat_template, cfg.max_prompt_len)
        n_b = math.ceil(len(prompts) / cfg.regen_batch)
        mine = list(range(info.rank, n_b, info.world_size))
        docs = D.regenerate(target, prompts, cfg.regen, cfg.max_new_tokens, cfg.regen_batch, cfg.temperature,
                            cfg.top_p, seed, self._tokenizer, mine, progress=cfg.progress and info.is_main)
        parts = all_gather_objects((mine, docs), info)
        by_batch: dict[int, list[dict]] = {}
        for bs, ds in parts:                                      # reassemble in prompt order
            k = 0
            for b in bs:
                cnt = min(cfg.regen_batch, len(prompts) - b * cfg.regen_batch)
                by_batch[b] = ds[k:k + cnt]
                k += cnt
        docs = [d for b in range(n_b) for d in by_batch[b]]
        if info.is_main:
            D.save_documents(seq_file, docs)
            meta_file.write_text(json.dumps(meta, indent=2))
        barrier(info)
        return docs

    def prepare(self) -> None:
        cfg, info = self.cfg, self.info
        if info.is_main:
            cfg.work.mkdir(parents=True, exist_ok=True)
            (cfg.work / "args.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        barrier(info)
        target = self.target()
        tc = _text_config(target.config)
        self.aux_ids = D.resolve_aux_layer_ids(tc.num_hidden_layers, cfg.aux_layers)
        base = Path(cfg.cache_dir) if cfg.cache_dir else cfg.work
        self.docs = self._documents(cfg.data, base / "sequences.jsonl", cfg.max_prompts, cfg.seed)
        self.eval_docs = []
        if cfg.eval_data:
            self.eval_docs = self._documents(cfg.eval_data, base / "eval_sequences.jsonl", cfg.max_eval_prompts,
                                             cfg.seed + 1)
        max_tokens = cfg.seq_len + 1
        if cfg.cache_dir:
            self.features: D.FeatureSource = self._ensure_cache(Path(cfg.cache_dir), self.docs, tc.hidden_size)
            self.eval_features = (self._ensure_cache(Path(cfg.cache_dir) / "eval", self.eval_docs, tc.hidden_size)
                                  if self.eval_docs else None)
        else:
            self.features = D.OnlineFeatures(target, self.docs, self.aux_ids, cfg.feature_batch, max_tokens)
            self.eval_features = (D.OnlineFeatures(target, self.eval_docs, self.aux_ids, cfg.feature_batch, max_tokens)
                                  if self.eval_docs else None)

    def _ensure_cache(self, cache: Path, docs: list[dict], target_hidden: int) -> D.DiskFeatures:
        """Write the feature cache of ``docs`` into ``cache`` unless it is there (ranks split the documents),
        check it against this run, and open it."""
        cfg, info = self.cfg, self.info
        if D.read_manifest(cache) is None:
            target = self.target()
            mine = list(range(len(docs)))[info.rank::info.world_size]
            shards = D.write_feature_shards(cache, target, docs, mine, self.aux_ids, cfg.feature_batch,
                                            cfg.seq_len + 1, next(target.parameters()).dtype, prefix=f"r{info.rank}",
                                            progress=cfg.progress and info.is_main)
            all_shards = [x for part in all_gather_objects(shards, info) for x in part]
            if info.is_main:
                D.write_manifest(cache, all_shards, len(docs), self.aux_ids, target_hidden,
                                 {"seq_len": cfg.seq_len, "target": os.path.abspath(cfg.target)})
            barrier(info)
        man = D.read_manifest(cache)
        if list(man["aux_layer_ids"]) != list(self.aux_ids):
            raise ValueError(f"{cache}: cached aux layer ids {man['aux_layer_ids']} != {list(self.aux_ids)}")
        if man.get("seq_len", cfg.seq_len) < cfg.seq_len:
            raise ValueError(f"{cache}: the cache holds {man['seq_len']}+1 tokens per document; --seq-len "
                             f"{cfg.seq_len} needs more (rebuild the cache)")
        if man["num_documents"] != len(docs):
            raise ValueError(f"{cache}: the cache holds {man['num_documents']} documents; the data has {len(docs)}")
        return D.DiskFeatures(cache, self.device)

    def build_model(self) -> None:
        cfg = self.cfg
        target = self.target()
        tc = _text_config(target.config)
        V = tc.vocab_size
        counts = count_tokens((D.supervised_tokens(d, cfg.supervise_prompt) for d in self.docs), V)
        self.token_counts = counts
        parallel = cfg.mode == "parallel" and cfg.depth > 1
        tok = self._tokenizer
        tok_len = len(tok) if tok is not None else None
        tok_mask = getattr(tok, "mask_token_id", None) if tok is not None else None
        mask_id = resolve_mask_token_id(V, cfg.mask_token_id, tok_len, counts, tok_mask) if parallel else None
        Nd = cfg.draft_vocab or V
        d2t, t2d = select_draft_vocab(counts, Nd, exclude=[mask_id] if (mask_id is not None and Nd < V) else ())
        self.d2t, self.t2d, self.mask_id = d2t, t2d, mask_id
        self.dcfg = drafter_config_from_target(target.config, cfg, self.aux_ids, Nd, mask_id)
        drafter = init_drafter(self.dcfg, target, d2t, cfg.init_std, cfg.seed)
        pdt = DTYPES[cfg.dtype] if cfg.dtype in ("fp64", "float64", "fp32", "float32") else torch.float32
        self.autocast_dtype = DTYPES[cfg.dtype] if cfg.dtype in ("bf16", "bfloat16", "fp16", "float16") else None
        self.module = TrainableDrafter(drafter, parallel, cfg.train_embeddings).to(self.device, pdt)
        head = target.get_output_embeddings()
        ids = draft_to_target_ids(d2t).to(head.weight.device)
        hdt = torch.float64 if pdt == torch.float64 else torch.float32
        self.head_weight = head.weight[ids].detach().to(self.device, hdt).contiguous()
        self.head_bias = (head.bias[ids].detach().to(self.device, hdt) if getattr(head, "bias", None) is not None
                          else None)
        self.model = wrap_model(self.module, self.info)
        decay, no_decay = [], []
        for n, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and "embed" not in n and "mask" not in n else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
        warm = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, cfg.steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, cfg.steps, warm, cfg.min_lr_ratio))
        self.backend = default_backend(self.device) if cfg.attention == "auto" else cfg.attention
        self.depth_weights = (torch.tensor(cfg.depth_weights, dtype=torch.float64, device=self.device)
                              if cfg.depth_weights else None)
        self.grad_sync = grad_sync_fn(self.model, self.info)
        self.schedule = D.PackSchedule([D.doc_rows(d, cfg.seq_len) for d in self.docs], cfg.seq_len, cfg.seed)
        self.start_step = 0

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int, final: bool = False) -> None:
        cfg, info = self.cfg, self.info
        msd, osd = full_state(self.model, self.optimizer, info)
        if info.is_main:
            d = cfg.work / "checkpoints" / f"step-{step:07d}"
            tmp = d.with_name(d.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            self._export(msd, tmp)
            torch.save({"version": 1, "step": step, "model": msd, "optimizer": osd,
                        "scheduler": self.scheduler.state_dict(), "config": dataclasses.asdict(cfg),
                        "drafter_config": self.dcfg.to_dict(), "d2t": self.d2t, "t2d": self.t2d},
                       tmp / "train_state.pt")
            if d.exists():
                shutil.rmtree(d)
            os.replace(tmp, d)
            if final:
                self._export(msd, Path(cfg.out))
        barrier(info)

    def export_drafter(self, msd: dict | None = None) -> Drafter:
        if msd is None:
            msd, _ = full_state(self.model, None, self.info)
        dr = Drafter(self.dcfg)
        dr.load_state_dict(export_state_dict(msd, self.mask_id), strict=True)
        return dr.to(DTYPES[self.cfg.save_dtype])

    def _export(self, msd: dict, path: Path) -> None:
        save_serving(self.export_drafter(msd), path, self.cfg.save_format, self.cfg.target)

    def maybe_resume(self) -> None:
        if not self.cfg.resume:
            return
        ck = latest_checkpoint(self.cfg.work)
        if ck is None:
            if self.info.is_main:
                print(f"[pedagle train] --resume: no checkpoint under {self.cfg.work / 'checkpoints'}; starting fresh")
            return
        st = torch.load(ck / "train_state.pt", map_location="cpu", weights_only=False)
        if not torch.equal(st["d2t"], self.d2t):
            raise ValueError(f"{ck}: the checkpoint's draft vocabulary differs from this run's (different data?)")
        load_full_state(self.model, self.optimizer, st["model"], st["optimizer"], self.info)
        self.scheduler.load_state_dict(st["scheduler"])
        self.start_step = int(st["step"])
        if self.info.is_main:
            print(f"[pedagle train] resumed from {ck} at step {self.start_step}")

    # ---------------------------------------------------------------- steps
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _micro_batches(self, step: int):
        cfg, info = self.cfg, self.info
        out = []
        for a in range(cfg.grad_accum):
            g = (step * cfg.grad_accum + a) * info.world_size + info.rank
            idx = self.schedule[g]
            docs = [self.docs[i] for i in idx]
            rows = D.build_rows(docs, self.features.get(idx), cfg.seq_len, self.device, cfg.supervise_prompt)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + g)
            el = sample_cod(rows.valid, rows.doc, cfg.depth, cfg.cod_ratio, cfg.cod_ratio_min, gen)
            out.append((rows, el))
        return out

    def _run_pack(self, rows, el, pad_segments: int = 0, force_prepass: bool = False, **kw):
        cfg = self.cfg
        common = dict(num_depths=cfg.depth, head_weight=self.head_weight, head_bias=self.head_bias,
                      depth_weights=self.depth_weights, backend=self.backend, autocast=self._autocast())
        if cfg.mode == "autoregressive" and cfg.depth > 1:
            return run_pack_ttt(self.model, rows, el, **common, **kw)
        return run_pack(self.model, rows, el, mask_token_id=self.mask_id, num_segments=cfg.segments,
                        pad_segments=pad_segments, force_prepass=force_prepass, **common, **kw)

    def _aligned_shapes(self, packs) -> list[tuple[int, bool]]:
        """Per micro-batch (segments, prefix pass) padded to the maximum over ranks under FSDP (every rank
        must issue the same all-gathers); (0, False) = no padding elsewhere."""
        if self.info.mode != "fsdp" or self.info.world_size == 1 or self.cfg.mode == "autoregressive":
            return [(0, False)] * len(packs)
        t = torch.tensor([pack_shape(el, doc, self.cfg.segments) for el, doc in packs], dtype=torch.float64,
                         device=self.device).view(-1, 2)
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [(int(n), bool(p)) for n, p in t.tolist()]

    def train_step(self, step: int) -> dict:
        cfg, info = self.cfg, self.info
        t0 = time.perf_counter()
        self.model.train()
        batches = self._micro_batches(step)
        n_local = sum(int(rows.valid[el.target_row.to(rows.valid.device)].sum()) for rows, el in batches)
        n_total = float(all_reduce_sum(torch.tensor([n_local], dtype=torch.float64, device=self.device), info)[0])
        scale = (info.world_size if info.mode != "none" else 1) / max(n_total, 1.0)
        K = cfg.depth
        acc = {k: torch.zeros(K, dtype=torch.float64, device=self.device) for k in ("correct", "count", "kl")}
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        rows_n = elems = 0
        shapes = self._aligned_shapes([(el, rows.doc) for rows, el in batches])
        for a, (rows, el) in enumerate(batches):
            st = self._run_pack(rows, el, loss_scale=scale, grad_sync=self.grad_sync, last=a == len(batches) - 1,
                                pad_segments=shapes[a][0], force_prepass=shapes[a][1])
            acc["correct"] += st.correct
            acc["count"] += st.count
            acc["kl"] += st.kl
            loss_sum += st.loss_sum
            rows_n += len(rows)
            elems += len(el)
        params = [p for p in self.module.parameters() if p.requires_grad]
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else float("inf"))
        gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        vec = torch.cat([loss_sum.view(1), acc["correct"], acc["count"], acc["kl"],
                         torch.tensor([rows_n, elems], dtype=torch.float64, device=self.device)])
        vec = all_reduce_sum(vec, info).cpu()
        correct, count, kl = vec[1:1 + K], vec[1 + K:1 + 2 * K], vec[1 + 2 * K:1 + 3 * K]
        dt = time.perf_counter() - t0
        return {"step": step + 1, "loss": float(vec[0]) / max(n_total, 1.0), "lr": lr, "grad_norm": gnorm,
                "acc": [round(float(c / n), 5) if n > 0 else None for c, n in zip(correct, count)],
                "kl": [round(float(x / n), 5) if n > 0 else None for x, n in zip(kl, count)],
                "count": [int(n) for n in count], "rows": int(vec[-2]), "elements": int(vec[-1]),
                "supervised": int(n_total), "time_s": round(dt, 4), "rows_per_s": round(float(vec[-2]) / dt, 1),
                "epoch": round(self.schedule.epoch_of((step + 1) * cfg.grad_accum * info.world_size - 1), 3)}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Per-depth top-1 agreement on the held-out documents over *every* chain (COD ratio 1)."""
        cfg = self.cfg
        if not self.eval_docs:
            return {}
        self.model.eval()
        K = cfg.depth
        correct = torch.zeros(K, dtype=torch.float64, device=self.device)
        count, kl = correct.clone(), correct.clone()
        packs = D.pack_plan([D.doc_rows(d, cfg.seq_len) for d in self.eval_docs], cfg.seq_len, cfg.seed, 0)
        mine = packs[self.info.rank::self.info.world_size]
        n_calls = len(mine)
        if self.info.mode == "fsdp":                     # same number of forwards on every rank
            n_calls = int(all_reduce_sum(torch.tensor([0.0] * self.info.rank + [len(mine)] +
                                                      [0.0] * (self.info.world_size - self.info.rank - 1),
                                                      dtype=torch.float64, device=self.device), self.info).max())
        for j in range(n_calls):
            p = mine[j] if j < len(mine) else mine[0] if mine else packs[0]
            rows = D.build_rows([self.eval_docs[i] for i in p], self.eval_features.get(p), cfg.seq_len, self.device,
                                cfg.supervise_prompt)
            el = sample_cod(rows.valid, rows.doc, K, 1.0, 1.0)
            shape = self._aligned_shapes([(el, rows.doc)])[0]
            st = self._run_pack(rows, el, backward=False, pad_segments=shape[0], force_prepass=shape[1])
            if j >= len(mine):
                continue                                  # a padding call: its statistics are not counted
            correct += st.correct
            count += st.count
            kl += st.kl
        vec = all_reduce_sum(torch.cat([correct, count, kl]), self.info).cpu()
        c, n, k = vec[:K], vec[K:2 * K], vec[2 * K:]
        accs = [float(a / b) if b > 0 else 0.0 for a, b in zip(c, n)]
        al, prod = 1.0, 1.0
        for x in accs:
            prod *= x
            al += prod
        self.model.train()
        return {"eval_acc": [round(x, 5) for x in accs], "eval_kl": [round(float(a / b), 5) if b > 0 else None
                                                                     for a, b in zip(k, n)],
                "eval_count": [int(x) for x in n], "eval_al_proxy": round(al, 4)}

    # ---------------------------------------------------------------- main loop
    def run(self) -> dict:
        cfg, info = self.cfg, self.info
        t_start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.prepare()
        if cfg.prepare_only:
            return {"documents": len(self.docs)}
        self.build_model()
        self.maybe_resume()
        if cfg.tensorboard and info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(cfg.work / "tensorboard"))
            except ImportError:
                warnings.warn("--tensorboard: tensorboard is not installed; logging to metrics.jsonl only",
                              stacklevel=2)
        if info.is_main and self.start_step == 0:
            n_params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
            self.log({"event": "start", "prepare_s": round(time.perf_counter() - t_start, 2), "documents": len(self.docs), "eval_documents": len(self.eval_docs),
                      "trainable_params": n_params, "mask_token_id": self.mask_id,
                      "draft_vocab_size": int(self.d2t.numel()), "aux_layer_ids": list(self.aux_ids),
                      "attention": self.backend, "world_size": info.world_size, "distributed": info.mode,
                      "drafter_config": self.dcfg.to_dict(),
                      "draft_vocab_coverage": float(self.token_counts[self.t2d].sum() /
                                                    max(int(self.token_counts.sum()), 1))})
        end = cfg.steps if cfg.stop_after is None else min(cfg.steps, self.start_step + cfg.stop_after)
        bar = None
        if cfg.progress and info.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.steps, initial=self.start_step, desc="train", dynamic_ncols=True)
        last = {}
        for step in range(self.start_step, end):
            rec = self.train_step(step)
            rec["wall_s"] = round(time.perf_counter() - t_start, 2)
            last = rec
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and self.eval_docs:
                rec |= self.evaluate()
            if (step + 1) % max(cfg.log_every, 1) == 0 or step + 1 == end:
                self.log(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", acc0=rec["acc"][0], refresh=False)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                self.save_checkpoint(step + 1)
        if bar is not None:
            bar.close()
        if end == cfg.steps:
            ev = self.evaluate()
            if ev:
                self.log({"step": cfg.steps, "event": "final_eval", "wall_s": round(time.perf_counter() - t_start, 2)}
                         | ev)
                last = last | ev
            self.save_checkpoint(cfg.steps, final=True)
        elif cfg.save_every == 0 or end % cfg.save_every:
            self.save_checkpoint(end)
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.tb is not None:
            self.tb.close()
        return last


def train(cfg: TrainConfig, target=None, tokenizer=None) -> dict:
    tr = Trainer(cfg, target, tokenizer)
    try:
        return tr.run()
    finally:
        cleanup(tr.info)
