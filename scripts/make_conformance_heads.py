#!/usr/bin/env python3
"""Build the conformance suite's small random models and case definitions, reproducibly from fixed seeds.

    python scripts/make_conformance_heads.py [--out conformance/cases/random]
    pedagle conformance record --cases conformance/cases        # then fill in the expected results

Writes ``OUT/models/`` (tiny targets and drafter heads, weights stored in bf16 to keep the files small;
every case computes in float32, where a bf16-stored weight is exact) and one case JSON per case in
``OUT/`` (definitions only: ``expected`` is null until ``pedagle conformance record`` runs).

Models (vLLM's CPU attention needs head_dim 64, so every attention layer uses it):

* ``llama-target``: a 4-layer Llama, vocab 128, hidden 64 (one head of 64), whose layers only nudge
  the residual stream (output projections scaled by 0.1): its greedy next token is mostly a function
  of the current token, with the context still mattering.
* ``qwen3-target``: the same as a Qwen3 (q/k norms).
* Heads (hidden 128, 2 query / 2 KV heads of 64; see `fitted_drafter`): random networks, so every
  input (token ids, aux hidden states, positions, ``mask_hidden``, the drafter's KV history) moves the
  drafts, plus a scaled identity that lets each row's own token dominate its features; ``lm_head`` is
  then fitted by ridge regression to the target's greedy choices on real drafting contexts. Drafts are
  often right, sometimes wrong (acceptance varies over 0..K), and a zeroed ``mask_hidden``, positions
  off by one or wrong aux hidden states change them (the broken-backend tests rely on it).

  ========== ===================== ================================================================
  head       format                what it covers
  ========== ===================== ================================================================
  peagle     vLLM (canonical)      P-EAGLE, 1 layer, full vocabulary
  peagle-spec speculators          the same weights as a speculators export
  peagle-dv  vLLM                  P-EAGLE, 2 layers, draft vocabulary 96 < 128 (d2t)
  eagle3     vLLM                  autoregressive EAGLE-3 (no mask token), draft vocabulary 96
  eagle3-spec speculators          the same weights as a speculators export
  qwen3-peagle vLLM                Qwen3-style head (q/k norms) on ``qwen3-target``
  ========== ===================== ================================================================

Prompts: three or four per case, lengths mixed (3..31 tokens), ids >= 2 (0 = EOS/BOS, 1 = MASK), the
first seeds whose reference run keeps every draft margin >= ``MIN_MARGIN`` (no near-ties in the
recording). ``--tiny-code [DIR]`` writes the case definitions for the trained family instead
(``conformance/cases/tiny-code``; held-out prompts cut to mixed lengths).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 128
MASK_ID = 1
TARGET_HIDDEN = 64
HEAD_DIM = 64
AUX_LAYERS = (1, 2, 3)
H = 128                     # drafter hidden size
SEED = 1234


def _conformance_importable() -> None:
    """``pedagle_conformance`` from this checkout when pedagle is not installed (``pip install -e .``)."""
    import importlib.util

    try:
        import pedagle_conformance  # noqa: F401
    except ImportError:
        d = ROOT / "conformance"
        spec = importlib.util.spec_from_file_location("pedagle_conformance", d / "__init__.py",
                                                      submodule_search_locations=[str(d)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["pedagle_conformance"] = mod
        spec.loader.exec_module(mod)


def _round_bf16_(module: torch.nn.Module) -> None:
    """Round every floating parameter to a bf16-representable value (stored in bf16, exact in float32)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.copy_(p.to(torch.bfloat16).float())


def build_target(path: Path, seed: int, architecture: str = "llama", layer_scale: float = 0.1):
    """Save the bigram target under ``path`` (bf16 weights); returns the model (float32, same values)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    conf_cls, model_cls = ((LlamaConfig, LlamaForCausalLM) if architecture == "llama"
                           else (Qwen3Config, Qwen3ForCausalLM))
    cfg = conf_cls(vocab_size=VOCAB, hidden_size=TARGET_HIDDEN, intermediate_size=2 * TARGET_HIDDEN,
                   num_hidden_layers=4, num_attention_heads=1, num_key_value_heads=1, head_dim=HEAD_DIM,
                   max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else 0.12))
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(1.0)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(layer_scale)
        _round_bf16_(model)
    model.to(torch.bfloat16).save_pretrained(str(path))
    return model.float().eval()


def fitted_drafter(target, seed: int, parallel: bool = True, draft_vocab_size: int | None = None,
                   num_layers: int = 1, architecture: str = "llama", attn_scale: float = 0.5, noise: float = 1.0,
                   hidden_scale: float = 1.0, ridge: float = 0.3, logit_scale: float = 3.0, n_seq: int = 32,
                   seq_len: int = 48):
    """A random drafter whose ``lm_head`` is fitted (ridge regression) to the target's greedy choices.

    Every weight is random (std ``noise / sqrt(fan_in)``), so the drafts depend on every input: token
    ids, aux hidden states (``hidden_scale``: the weight of the normed fc output in the residual), positions
    (RoPE and the causal context: q/k read the context too), ``mask_hidden`` and the drafter's KV
    history. On top, query/key head h reads embedding dims h*64 .. h*64+63 through a scaled identity
    (``attn_scale``), so a row attends mostly to itself and its token dominates its features. The readout
    is then fitted, as EAGLE's training would, on real drafting contexts: random sequences through the
    target give aux hidden states and greedy next tokens; the drafter's rows (token t_{p+1}, hidden
    fc(aux_p), causal attention) are fitted to the target's choice at p+1, and for chain (EAGLE-3) heads
    also one fed-back step (token t_{p+2}, the drafter's own hidden of row p) to the choice at p+2.
    """
    from pedagle_core.attention import MaskedAttention
    from pedagle_core.config import DrafterConfig
    from pedagle_core.model import Drafter

    V = VOCAB
    cfg = DrafterConfig(hidden_size=H, num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
                        head_dim=HEAD_DIM, intermediate_size=H, vocab_size=V, draft_vocab_size=draft_vocab_size,
                        target_hidden_size=TARGET_HIDDEN, aux_layer_ids=AUX_LAYERS,
                        mask_token_id=MASK_ID if parallel else None, parallel_depth=8 if parallel else 1,
                        max_position_embeddings=512, norm_before_residual=True, architecture=architecture)
    g = torch.Generator().manual_seed(seed)
    d = Drafter(cfg).float().eval()
    with torch.no_grad():
        for name, p in d.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * noise / p.shape[1] ** 0.5)
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
        d.embed_tokens.weight.copy_(torch.randn(d.embed_tokens.weight.shape, generator=g))
        d.mask_hidden.copy_(torch.randn(d.mask_hidden.shape, generator=g))
        l0 = d.layers[0]
        l0.hidden_norm.weight.fill_(hidden_scale)
        eye = torch.eye(HEAD_DIM)
        for h in range(2):
            blk = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            l0.self_attn.q_proj.weight[blk, blk] += eye * attn_scale
            l0.self_attn.k_proj.weight[blk, blk] += eye
            l0.self_attn.v_proj.weight[blk, blk] += eye

        # training contexts from the target
        toks = torch.randint(2, V, (n_seq, seq_len), generator=g)
        out = target(toks, output_hidden_states=True)
        greedy = out.logits.argmax(-1)                                          # [n, L]: choice after pos p
        aux = torch.cat([out.hidden_states[i] for i in AUX_LAYERS], dim=-1)     # [n, L, 3*Ht]
        L = seq_len - 1
        causal = MaskedAttention(torch.ones(L, L, dtype=torch.bool).tril())
        pos = torch.arange(L)
        feats, wants = [], []
        for b in range(n_seq):
            o, fb = d(toks[b, 1:], pos, d.project_hidden(aux[b, :-1]), causal)   # row p: token t_{p+1}
            feats.append(o)
            wants.append(greedy[b, 1:])                                         # the choice after t_{p+1}
            if not parallel:                                                    # one fed-back chain step
                causal2 = MaskedAttention(torch.ones(L - 1, L - 1, dtype=torch.bool).tril())
                o2, _ = d(toks[b, 2:], pos[:-1] + 1, fb[:-1], causal2)
                feats.append(o2)
                wants.append(greedy[b, 2:])
        X = torch.cat(feats).double()
        want = torch.cat(wants)
        Vd = int(cfg.draft_vocab_size)
        if Vd < V:      # reduced draft vocabulary: the most frequent wanted ids (then random others), as d2t
            counts = torch.bincount(want, minlength=V).double() + torch.rand(V, generator=g, dtype=torch.float64) * 0.5
            ids = counts.argsort(descending=True)[:Vd].sort().values
            d.d2t.copy_(ids - torch.arange(Vd))
        else:
            ids = torch.arange(V)
        col = torch.full((V,), -1, dtype=torch.long)
        col[ids] = torch.arange(Vd)
        Y = torch.full((X.shape[0], Vd), -1.0, dtype=torch.float64)
        ok = col[want] >= 0
        Y[torch.nonzero(ok).view(-1), col[want[ok]]] = 1.0
        Y *= 4.0
        W = torch.linalg.solve(X.T @ X + ridge * X.shape[0] / H * torch.eye(H, dtype=X.dtype), X.T @ Y).T
        d.lm_head.weight.copy_(W.float() * logit_scale)
        _round_bf16_(d)
    return d


def prompts(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (n,), generator=g).tolist() for n in lengths]


MIN_MARGIN = 0.02          # cases keep clear of near-ties: smallest top-1 minus top-2 drafter logit


def pick_prompts(case, seed: int, lens: tuple[int, ...], tries: int = 50) -> tuple[list[list[int]], float]:
    """The first prompts (seeds seed, seed+1000, ...) whose reference run has every draft margin >=
    MIN_MARGIN, so that correct backends cannot differ by a near-tie (deterministic)."""
    import os

    from pedagle_core.engine.backend import ReferenceBackend

    os.environ["TRITON_INTERPRET"] = "0"
    best = None
    for k in range(tries):
        ps = prompts(seed + 1000 * k, lens)
        case.prompt_ids = ps
        res = ReferenceBackend().run_case(**case.run_args())
        m = min(x for step in res["margins"] for req in step for x in req)
        if m >= MIN_MARGIN:
            return ps, m
        if best is None or m > best[1]:
            best = (ps, m)
    return best


# name, target, head, format, mode, K, steps, prompt lengths, tags
CASES = [
    ("random-peagle-k3", "llama-target", "peagle", "vllm", "parallel", 3, 6, (5, 11, 23, 31),
     "P-EAGLE head in the canonical vLLM format"),
    ("random-peagle-k1", "llama-target", "peagle", "vllm", "parallel", 1, 6, (3, 17, 8),
     "P-EAGLE head with K=1 (no MASK slots)"),
    ("random-peagle-spec-k5", "llama-target", "peagle-spec", "speculators", "parallel", 5, 5, (9, 4, 27, 14),
     "the same P-EAGLE head as a speculators export, K=5"),
    ("random-peagle-dv-k4", "llama-target", "peagle-dv", "vllm", "parallel", 4, 6, (12, 6, 30),
     "2-layer P-EAGLE head with a draft vocabulary of 96 < 128 (d2t)"),
    ("random-eagle3-ar-k3", "llama-target", "eagle3", "vllm", "autoregressive", 3, 6, (7, 19, 3, 25),
     "autoregressive EAGLE-3 head (no mask token), draft vocabulary 96"),
    ("random-eagle3-spec-ar-k2", "llama-target", "eagle3-spec", "speculators", "autoregressive", 2, 6, (15, 5, 10),
     "the EAGLE-3 head as a speculators export, autoregressive K=2"),
    ("random-qwen3-peagle-k3", "qwen3-target", "qwen3-peagle", "vllm", "parallel", 3, 6, (4, 13, 29, 9),
     "Qwen3 target and Qwen3-style P-EAGLE head (q/k norms)"),
]


TINY_CODE_CASES = [
    ("tiny-code-peagle-k5", "peagle", "parallel", 5, 5,
     "trained P-EAGLE head (4 layers, depth 8, draft vocabulary 2048 of 4096)"),
    ("tiny-code-eagle3-ar-k3", "eagle3", "autoregressive", 3, 5, "trained EAGLE-3 head (1 layer), autoregressive"),
]
TINY_CODE_LENS = (12, 20, 33)


def tiny_code_cases(out: Path, family: Path) -> int:
    """Case definitions for the bundled trained family ``models/tiny-code`` (held-out prompts, cut to
    mixed lengths; the first prompts whose reference drafts keep clear of near-ties, if any do)."""
    import os

    from tokenizers import Tokenizer

    from pedagle_conformance.case import Case, save_case

    tok = Tokenizer.from_file(str(family / "target" / "tokenizer.json"))
    lines = [json.loads(x)["prompt"] for x in (family / "target" / "heldout_prompts.jsonl").read_text().splitlines()
             if x.strip()]
    rel = os.path.relpath(family, out)
    for name, head, mode, K, steps, desc in TINY_CODE_CASES:
        c = Case(name=name, description=desc, target=f"{rel}/target", drafter=f"{rel}/{head}", drafter_format="vllm",
                 mode=mode, K=K, steps=steps, dtype="float32", device="cpu", prompt_ids=[],
                 tags=["tiny-code", "trained", mode], path=out / f"{name}.json")
        best = None
        for k in range(0, len(lines) - len(TINY_CODE_LENS) + 1, len(TINY_CODE_LENS)):
            ids = [tok.encode(t).ids for t in lines[k: k + len(TINY_CODE_LENS)]]
            if any(len(i) < n for i, n in zip(ids, TINY_CODE_LENS)):
                continue
            c.prompt_ids = [i[:n] for i, n in zip(ids, TINY_CODE_LENS)]
            m = _min_margin(c)
            if best is None or m > best[1]:
                best = (c.prompt_ids, m, k)
            if m >= TINY_CODE_MIN_MARGIN or k >= 8 * len(TINY_CODE_LENS):
                break
        c.prompt_ids = best[0]
        for f in [out / f"{name}.json", out / f"{name}.steps.safetensors"]:
            if f.exists():
                f.unlink()
        save_case(c)
        print(f"case {name}: held-out prompts {best[2]}.. cut to {list(TINY_CODE_LENS)} tokens, smallest draft "
              f"margin {best[1]:.3g}")
    return 0


TINY_CODE_MIN_MARGIN = 0.01


def _min_margin(case) -> float:
    import os

    from pedagle_core.engine.backend import ReferenceBackend

    os.environ["TRITON_INTERPRET"] = "0"
    res = ReferenceBackend().run_case(**case.run_args())
    return min(x for step in res["margins"] for req in step for x in req)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "conformance" / "cases" / "random"))
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--tiny-code", nargs="?", const=str(ROOT / "models" / "tiny-code"), default=None, metavar="DIR",
                   help="write only the case definitions for the trained family DIR (default models/tiny-code) into "
                        "conformance/cases/tiny-code (or --out)")
    a = p.parse_args(argv)
    _conformance_importable()
    if a.tiny_code:
        out = Path(a.out) if a.out != p.get_default("out") else ROOT / "conformance" / "cases" / "tiny-code"
        return tiny_code_cases(out, Path(a.tiny_code).resolve())
    from pedagle_core.formats import save_drafter

    out = Path(a.out)
    models = out / "models"
    if models.exists():
        shutil.rmtree(models)
    models.mkdir(parents=True)
    s = a.seed
    llama = build_target(models / "llama-target", s)
    qwen3 = build_target(models / "qwen3-target", s + 1, architecture="qwen3")
    bf16 = torch.bfloat16
    peagle = fitted_drafter(llama, s + 10, parallel=True)
    save_drafter(peagle, models / "peagle", dtype=bf16, verifier_name_or_path="../llama-target")
    save_drafter(peagle, models / "peagle-spec", format="speculators", dtype=bf16,
                 verifier_name_or_path="../llama-target")
    save_drafter(fitted_drafter(llama, s + 20, parallel=True, draft_vocab_size=96, num_layers=2),
                 models / "peagle-dv", dtype=bf16, verifier_name_or_path="../llama-target")
    eagle3 = fitted_drafter(llama, s + 30, parallel=False, draft_vocab_size=96)
    save_drafter(eagle3, models / "eagle3", dtype=bf16, verifier_name_or_path="../llama-target")
    save_drafter(eagle3, models / "eagle3-spec", format="speculators", dtype=bf16,
                 verifier_name_or_path="../llama-target")
    save_drafter(fitted_drafter(qwen3, s + 40, parallel=True, architecture="qwen3"), models / "qwen3-peagle",
                 dtype=bf16, verifier_name_or_path="../qwen3-target")

    from pedagle_conformance.case import Case, save_case   # noqa: E402 (needs the package importable)

    for i, (name, target, head, fmt, mode, K, steps, lens, desc) in enumerate(CASES):
        for f in [out / f"{name}.json", out / f"{name}.steps.safetensors"]:
            if f.exists():
                f.unlink()
        c = Case(name=name, description=desc, target=f"models/{target}", drafter=f"models/{head}",
                 drafter_format=fmt, mode=mode, K=K, steps=steps, dtype="float32", device="cpu",
                 prompt_ids=[], tags=["random", target.split("-")[0], fmt, mode], path=out / f"{name}.json")
        c.prompt_ids, margin = pick_prompts(c, s + 100 + i, lens)
        save_case(c)
        print(f"case {name}: prompts of {list(lens)} tokens, smallest draft margin {margin:.3g}")
    print(f"wrote {models} ({sum(f.stat().st_size for f in models.rglob('*') if f.is_file()) // 1024} KiB) and "
          f"{len(CASES)} case definitions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
