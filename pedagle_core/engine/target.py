"""The reference engine's target model: an unchanged transformers causal LM over pedagle's static KV cache.

How it works
------------
transformers (>= 5) routes every attention call of Llama / Qwen2 / Qwen3 / Qwen3-MoE / GPT-OSS modules
through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``, passing the module (``layer_idx``,
``sliding_window``), q/k/v after RoPE, ``scaling``, the module's ``sliding_window`` and, for GPT-OSS,
``s_aux`` (the attention sinks), plus every extra keyword given to the model's ``forward``. We register
one function under the name ``"pedagle"`` (`ATTENTION_NAME`) and, only for the duration of our own
forward (`TargetModel.forward`), switch the model's config to it. The per-forward metadata (a
`CacheAttention`, which knows the cache, the slot of every row and each row's request, and takes the
module's softmax scale and GPT-OSS sinks) travels as the model keyword ``pedagle_attn``. Because ``"pedagle"`` has no entry in transformers' mask registry, the
model builds no mask at all: masking (causal, per request, sliding window) is ours. Outside our forward
the model keeps its own implementation, so ``model.generate`` still works on the same object.

The batch is flat: all scheduled rows of all requests form one sequence ``[1, T]`` with explicit
``position_ids``; row t belongs to request ``request_index[t]`` and writes its K/V to ``slot_mapping[t]``
of a `ContiguousKVCache` (per layer ``[max_batch*max_seq_len, n_kv, D]``, slot = row*max_seq_len + pos).
A query at position p of request r sees the keys of r at positions <= p (and > p - window on sliding
layers): keys at later positions (e.g. rejected drafts of an earlier step) are never read, and the
positions of a verify step are written before they are attended, so stale KV never leaks.

Aux hidden states: id i = the residual stream entering decoder layer i (= HF ``output_hidden_states[i]``
for 0 <= i < L), captured by forward pre-hooks and concatenated on the last dim in sorted id order.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..attention import CacheAttention, ContiguousKVCache, _sdpa_scaled

ATTENTION_NAME = "pedagle"


class EngineError(ValueError):
    """A target, drafter or generation argument is unusable (the message names it and what was expected)."""


# ----------------------------------------------------------------------------------------------- attention
def pedagle_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                      scaling: float | None = None, dropout: float = 0.0, sliding_window: int | None = None,
                      s_aux: Tensor | None = None, pedagle_attn: CacheAttention | None = None,
                      **kwargs: Any) -> tuple[Tensor, None]:
    """transformers attention function (``AttentionInterface`` signature). query: [1, Hq, T, D];
    key/value: [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    if pedagle_attn is None:
        raise RuntimeError("attention implementation 'pedagle' runs only inside pedagle's TargetModel.forward "
                           "(it needs the keyword 'pedagle_attn'); use 'sdpa' or 'eager' elsewhere")
    if query.shape[0] != 1:
        raise RuntimeError(f"attention 'pedagle' expects one flat sequence (batch 1), got batch {query.shape[0]}")
    window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
    if s_aux is None:
        s_aux = getattr(module, "sinks", None)
    q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)
    out = pedagle_attn(module.layer_idx, q, k, v, window, scale=scaling, sinks=s_aux)
    return out[None], None


def register_attention() -> None:
    """Register `pedagle_attention` with transformers under `ATTENTION_NAME` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, pedagle_attention)


class RowwiseCacheAttention(CacheAttention):
    """Batch-invariant attention (``TargetModel(batch_invariant=True)``): every query row attends alone
    to exactly its own keys (positions ``max(0, p - window + 1) .. p`` of its request; no padding, every key
    admitted), so its output depends on that row and the cache only, not on how many rows, requests or keys
    the forward has. (The batched path pads all rows to the step's longest context and masks; the kernel's
    reduction order then depends on that length and on the row count, which moves bf16 results by an ulp.)
    One `_sdpa_scaled` call (the batched path's, sinks included) per row and layer: slow, meant for checking bitwise losslessness."""

    def kv_cache_slots(self, layer_idx: int) -> None:
        """Never: every call goes through the row-wise ``__call__``."""
        return None

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, window: int | None,
                 scale: float | None = None, sinks: Tensor | None = None) -> Tensor:
        self._write(layer_idx, k, v)
        c = self.cache
        kc = c.k[layer_idx].view(c.max_batch, c.max_seq_len, *c.k.shape[2:])     # [rows, S, Hkv, D]
        vc = c.v[layer_idx].view_as(kc)
        if "_rows" not in self.__dict__:
            self._rows = self.cache_rows[self.request_index.long()].tolist()
            self._pos = self.positions.long().tolist()
        out = torch.empty_like(q)
        for t, (r, p) in enumerate(zip(self._rows, self._pos)):
            lo = 0 if window is None else max(0, p - int(window) + 1)
            kt, vt = kc[r, lo: p + 1].to(q.dtype)[None], vc[r, lo: p + 1].to(q.dtype)[None]  # [1, S, Hkv, D]
            keys = torch.ones(1, 1, p + 1 - lo, dtype=torch.bool, device=q.device)          # every key: no pad
            o = _sdpa_scaled(q[t][None, None], kt, vt, keys, scale, sinks)                  # [1, 1, Hq, D]
            out[t] = o[0, 0]
        return out


# ----------------------------------------------------------------------------------------------- target
def default_aux_layer_ids(num_layers: int) -> tuple[int, ...]:
    """vLLM's default EAGLE-3 aux layers (2, L//2, L-3), sorted and de-duplicated."""
    return tuple(sorted({2, num_layers // 2, num_layers - 3}))


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float64": torch.float64, "fp64": torch.float64, "auto": None}
    if dtype not in names:
        raise EngineError(f"dtype = {dtype!r}; expected one of {sorted(names)}")
    return names[dtype]


def load_hf_target(path: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a local transformers causal-LM directory (config.json + weights) for verification."""
    from transformers import AutoModelForCausalLM

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise EngineError(f"--target {path!r}: expected a local Hugging Face model directory with config.json")
    dt = resolve_dtype(dtype)
    from ..formats.load import check_target_dir

    check_target_dir(path, dtype_given=dt is not None)     # a drafter dir as target; stored vs config dtype
    kw: dict[str, Any] = {"dtype": dt if dt is not None else "auto"}
    if dt == torch.float64:
        kw["experts_implementation"] = "eager"        # grouped_mm MoE kernels have no float64
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    return model.to(device).eval()


def _install_capture_hooks(model: nn.Module, layers: nn.ModuleList) -> None:
    """Once per model: a forward pre-hook on every decoder layer i that stores the layer's input hidden
    states in ``model._pedagle_capture[i]`` when that dict (set during our forwards only) has key i.
    The hooks hold no reference to any `TargetModel`, so wrappers (and their caches) can be freed."""
    if getattr(model, "_pedagle_hooks_installed", False):
        return

    def make(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            store = getattr(model, "_pedagle_capture", None)
            if store is not None and i in store:
                store[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(make(i), with_kwargs=True)
    model._pedagle_capture = None
    model._pedagle_hooks_installed = True


class TargetModel:
    """A transformers causal LM run over pedagle's static per-request KV cache.

    ``forward`` takes one flat step (rows of several requests, explicit positions) and returns the
    logits of the requested rows and the aux hidden states of every row.

    batch_invariant: attention one query row at a time over exactly its own keys (`RowwiseCacheAttention`),
    so a row's logits do not depend on the other rows of the forward (bf16 greedy output then equals
    target-only output bitwise, where the linear layers are row-count invariant too, as measured on CPU;
    ``bench/lossless_bf16.py``). Slower; no CUDA graphs.
    """

    def __init__(self, model: nn.Module, aux_layer_ids: Sequence[int] | None = None,
                 batch_invariant: bool = False) -> None:
        register_attention()
        self.batch_invariant = bool(batch_invariant)
        self.model = model.eval()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.config = cfg
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.layers: nn.ModuleList = decoder.layers
        self.num_layers = len(self.layers)
        self.vocab_size = int(cfg.vocab_size)
        self.hidden_size = int(cfg.hidden_size)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.max_position_embeddings = getattr(cfg, "max_position_embeddings", None)
        self.aux_layer_ids = self._check_aux_ids(aux_layer_ids)
        self.cache: ContiguousKVCache | None = None
        _install_capture_hooks(model, self.layers)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def eos_token_ids(self) -> tuple[int, ...]:
        """EOS ids from generation_config (else config); empty when the model declares none."""
        src = getattr(self.model, "generation_config", None)
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is None:
            eos = getattr(self.config, "eos_token_id", None)
        if eos is None:
            return ()
        return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))

    # ------------------------------------------------------------------ setup
    def _check_aux_ids(self, ids: Iterable[int] | None) -> tuple[int, ...]:
        L = self.num_layers
        ids = default_aux_layer_ids(L) if ids is None else tuple(sorted({int(i) for i in ids}))
        bad = [i for i in ids if not 0 <= i < L]
        if bad:
            raise EngineError(f"aux_layer_ids = {list(ids)}: ids {bad} are outside [0, {L}) for a target with "
                              f"{L} decoder layers (id i = the residual stream entering layer i)")
        return ids

    def allocate(self, max_batch: int, max_seq_len: int) -> ContiguousKVCache:
        """Preallocate the static KV cache (all layers, ``max_batch`` rows of ``max_seq_len`` slots)."""
        c = self.cache
        if c is None or c.max_batch < max_batch or c.max_seq_len != max_seq_len:
            self.cache = ContiguousKVCache(self.num_layers, max_batch, max_seq_len, self.num_kv_heads, self.head_dim,
                                           dtype=self.dtype, device=self.device)
        return self.cache

    @contextlib.contextmanager
    def _pedagle_attention(self):
        cfg = self.model.config
        saved = cfg._attn_implementation
        cfg._attn_implementation = ATTENTION_NAME
        try:
            yield
        finally:
            cfg._attn_implementation = saved

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, token_ids: Tensor, positions: Tensor, request_index: Tensor, cache_rows: Tensor,
                logits_rows: Tensor | None = None, write: Tensor | None = None,
                max_query_len: int | None = None) -> tuple[Tensor, Tensor]:
        """One flat target step.

        token_ids, positions, request_index: [T]; cache_rows: [B] cache row of each request of the step;
        logits_rows: [N] rows whose logits are wanted (None = all); write: [T] bool rows whose KV is
        stored (None = all). max_query_len: a static bound on any request's row count; with it the
        step never syncs with the host (CUDA-graph capture; positions must then be < max_seq_len).
        Returns (logits [N, V] float32-or-wider, aux [T, n_aux*H]).
        """
        if self.cache is None:
            raise EngineError("TargetModel.forward: call allocate(max_batch, max_seq_len) first")
        cache = self.cache
        pos = positions.long()
        static = max_query_len is not None
        if not static and int(pos.max()) >= cache.max_seq_len:
            raise EngineError(f"position {int(pos.max())} does not fit the target cache (max_seq_len "
                              f"{cache.max_seq_len})")
        rows = cache_rows.long()
        slots = rows[request_index.long()] * cache.max_seq_len + pos
        if write is not None:
            slots = torch.where(write, slots, -1)
        if getattr(self, "batch_invariant", False):
            if static:
                raise EngineError("batch_invariant target: static (CUDA-graph) steps are not supported")
            attn: CacheAttention = RowwiseCacheAttention(cache, pos, slots, request_index.long(), rows, impl="torch")
        else:
            attn = CacheAttention(cache, pos, slots, request_index.long(), rows, max_query_len=max_query_len,
                                  max_context=cache.max_seq_len if static else None)
        keep = logits_rows if logits_rows is not None else torch.arange(pos.numel(), device=pos.device)
        captured: dict[int, Tensor | None] = dict.fromkeys(self.aux_layer_ids)
        self.model._pedagle_capture = captured
        try:
            with self._pedagle_attention():
                out = self.model(input_ids=token_ids.long()[None], position_ids=pos[None], use_cache=False,
                                 logits_to_keep=keep.long(), pedagle_attn=attn)
            aux = torch.cat([captured[i][0] for i in self.aux_layer_ids], dim=-1)
        finally:
            self.model._pedagle_capture = None
        logits = out.logits[0]
        return (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits), aux
