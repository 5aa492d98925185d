"""Step-state replay through pedagle's SGLang drafting path, on SGLang's own Python classes (CPU-capable).

What runs (SGLang 0.5.23, its venv): for each recorded step input, in order,

1. the step is put in SGLang's terms (`SglangPrefillState`: extend rows / prefix lens / tail tokens;
   `SglangVerifyState`: bonus tokens, verified drafts, ``seq_lens``, ``accept_lens``) and translated
   back through the SGLang backend's own hook, ``SglangBackend.pedagle_make_step_input``
   (`pedagle_backends.sglang.layout`); the result must equal the recorded step input field by field
   (a difference is reported as a ``translation`` failure);
2. the worker's row layout (`layout.prefill_extend_layout` / `layout.decode_extend_layout`: 2K rows per
   request on SGLang's token-level page table) and expansion (`drafting.plan_step`);
3. the drafter as SGLang's model class (`PedagleSglangDrafter`, loaded by pedagle's strict loader) with
   one ``RadixAttention`` per layer over SGLang's ``ReqToTokenPool`` / ``MHATokenToKVPool``, under
   SGLang's ``TorchNativeAttnBackend`` (the one attention backend that runs without CUDA), inside
   SGLang's forward context; logits of the K sample rows, drafts through ``d2t``.

Not covered: SGLang's scheduler, the EAGLE worker's forward loop and the CUDA attention backends
(FlashInfer / Triton / FA3): those need a GPU (`pedagle conformance run --backends sglang` end to end).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

LEVEL = ("SGLang drafting path (layout + plan_step + PedagleSglangDrafter/RadixAttention on SGLang's "
         "TorchNativeAttnBackend and KV pools); scheduler and CUDA attention backends not exercised")


def available() -> tuple[bool, str]:
    try:
        import sglang  # noqa: F401
        from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend  # noqa: F401

        from pedagle_backends.sglang import drafting  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, (f"SGLang's Python API is not importable here ({type(e).__name__}: {e}); run step-state "
                       "in the SGLang environment (e.g. /work/venvs/sglang/bin/python -m pedagle_conformance run "
                       "--backends sglang --mode step-state)")
    return True, ""


def _equal_fields(a, b) -> list[str]:
    bad = []
    for f in ("token_ids", "positions", "query_start_loc", "num_rejected", "next_token_ids", "aux_hidden"):
        x, y = getattr(a, f), getattr(b, f)
        if x is None or y is None:
            if (x is None) != (y is None):
                bad.append(f)
            continue
        if x.shape != y.shape or not torch.equal(x.to(y.dtype), y):
            bad.append(f)
    return bad


@torch.no_grad()
def replay(case: dict[str, Any], steps: list, max_model_len: int) -> dict[str, Any]:
    """Drafts (and margins) of every recorded step through the SGLang drafting path."""
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    from pedagle_backends.sglang import layout
    from pedagle_backends.sglang.backend import SglangBackend, SglangPrefillState, SglangVerifyState
    from pedagle_backends.sglang.drafting import drafter_mask_token, greedy_drafts, plan_step
    from pedagle_backends.sglang.model import PedagleSglangDrafter
    from pedagle_core.engine.target import resolve_dtype

    from .stepstate import draft_vocab_margins

    K, mode = int(case["K"]), case["mode"]
    if mode != "parallel":
        raise NotImplementedError("the SGLang backend serves P-EAGLE (mode 'parallel') only")
    device = case.get("device", "cpu")
    dt = resolve_dtype(case.get("dtype", "float32")) or torch.float32
    model = PedagleSglangDrafter(config=None, checkpoint=case["drafter"])
    model.load_weights(iter(()))
    model = model.to(device=device, dtype=dt).eval()
    cfg = model.pedagle_config
    mask_id = drafter_mask_token(model.drafter, K)
    backend = SglangBackend()

    B = int(steps[0].next_token_ids.shape[0])
    maxlen = int(max_model_len) + 2 * K + 2
    rtt_pool = ReqToTokenPool(size=B, max_context_len=maxlen, device=device, enable_memory_saver=False)
    kv = MHATokenToKVPool(size=B * maxlen + 8, page_size=1, dtype=dt, head_num=cfg.num_key_value_heads,
                          head_dim=int(cfg.head_dim), layer_num=cfg.num_hidden_layers, device=device,
                          enable_memory_saver=False)
    req = torch.arange(1, B + 1, device=device)                # row 0 of req_to_token is SGLang's padding row
    rtt = rtt_pool.req_to_token
    rtt[req] = (1 + torch.arange(B, device=device)[:, None] * maxlen
                + torch.arange(maxlen, device=device)[None]).to(rtt.dtype)
    attn_backend = TorchNativeAttnBackend(SimpleNamespace(device=device, req_to_token_pool=rtt_pool,
                                                          token_to_kv_pool=kv))
    drafts, margins, problems = [], [], []
    for j, rec in enumerate(steps):
        rec = type(rec)(*(None if getattr(rec, f) is None else getattr(rec, f).to(device)
                          for f in ("token_ids", "positions", "query_start_loc", "num_rejected", "next_token_ids",
                                    "aux_hidden")))
        qsl = rec.query_start_loc.long()
        lens = qsl[1:] - qsl[:-1]
        if rec.num_rejected is None:                                            # prefill
            prefix = rec.positions[qsl[:-1]].long()
            state = SglangPrefillState(rec.token_ids, lens, prefix, rec.next_token_ids, rec.aux_hidden)
            fmode = ForwardMode.EXTEND
        else:
            if bool((lens != K + 1).any()):
                raise ValueError(f"step {j}: verify windows of {lens.tolist()} rows; SGLang verifies K+1 = {K + 1} "
                                 "rows per request")
            first = qsl[:-1]
            win = rec.token_ids.view(B, K + 1)
            state = SglangVerifyState(bonus_tokens=win[:, 0], drafts=win[:, 1:], seq_lens=rec.positions[first].long(),
                                      accept_lens=K - rec.num_rejected.long() + 1, next_token_ids=rec.next_token_ids,
                                      aux_hidden=rec.aux_hidden)
            fmode = ForwardMode.DRAFT_EXTEND_V2
        step = backend.pedagle_make_step_input(state)
        bad = _equal_fields(step, rec)
        if bad:
            problems.append({"step": j, "fields": bad})
        if rec.num_rejected is None:
            seq_lens = state.prefix_lens + lens
            mpos = layout.prefill_mask_positions(seq_lens, K)
            mask_locs = rtt[req[:, None], mpos].long()
            prompt_locs = torch.cat([rtt[req[b], int(state.prefix_lens[b]): int(seq_lens[b])].long() for b in range(B)])
            lay = layout.prefill_extend_layout(prompt_locs, lens, state.prefix_lens, mask_locs, K)
        else:
            lay = layout.decode_extend_layout(rtt, req, state.seq_lens, K)
        plan = plan_step(step, K, mask_id)
        e = plan.expanded
        fb = ForwardBatch(forward_mode=fmode, batch_size=B, input_ids=e.input_ids, req_pool_indices=req,
                          seq_lens=lay.seq_lens, out_cache_loc=lay.out_cache_loc, seq_lens_sum=int(lay.seq_lens.sum()),
                          positions=e.positions, extend_prefix_lens=lay.prefix_lens, extend_seq_lens=lay.extend_lens,
                          spec_info=SimpleNamespace(pedagle_plan=plan))
        attn_backend.init_forward_metadata(fb)
        with forward_context(ForwardContext(attn_backend=attn_backend)):
            logits = model.compute_sample_logits(fb)
        ids, _ = greedy_drafts(model.drafter, logits, B, K)
        drafts.append(ids.tolist())
        margins.append(draft_vocab_margins(logits).view(B, K).tolist())
    return {"drafts": drafts, "margins": margins, "level": LEVEL, "translation_problems": problems}


__all__ = ["available", "replay", "LEVEL"]
