"""A tiny target + drafters that vLLM's CPU build can serve (head_dim 64) and whose drafts are often right.

* Target: a 4-layer Llama whose layers barely touch the residual stream (output projections scaled by
  ``layer_scale``), so its greedy next token is (almost always) ``succ[current token]`` for a bigram map
  ``succ``; context still nudges the logits, so greedy output sometimes departs from the map.
* Drafters ("oracle" heads): 1 layer, 4 query / 2 KV heads of 64. q/k/v read the token-embedding half of
  layer 0's input with identity weights and q scaled by ``attn_scale``, so every row attends (almost) only
  to itself and the final hidden is (almost) a function of the row's token; ``lm_head`` is fitted by least
  squares so that the greedy draft after token t is ``succ[t]`` for a fraction ``accuracy`` of the tokens.
  ``norm_before_residual`` with a small ``hidden_norm`` and small random ``fc`` / MLP / ``mask_hidden``
  keep every input path in play (a wrong aux hidden or MASK handling changes drafts) without hiding the
  map. The P-EAGLE head's MASK slots draft ``want[mask]`` ≈ noise, so most acceptance is at position 1;
  the autoregressive EAGLE-3 head follows the map step after step (acceptance at every position).

Everything is built from seeds in float32 and saved with `pedagle_core.formats.save_drafter`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pedagle_core.attention import MaskedAttention
from pedagle_core.config import DrafterConfig
from pedagle_core.formats import save_drafter
from pedagle_core.model import Drafter

VOCAB = 128
MASK_ID = 1
TARGET_HIDDEN = 128
AUX_LAYERS = (1, 2, 3)


def build_target(path: Path, seed: int = 0, layer_scale: float = 0.02, max_position_embeddings: int = 512,
                 architecture: str = "llama"):
    """Save the bigram target (a Llama, or a Qwen3 with ``architecture='qwen3'``) under ``path``;
    returns (model, succ [V])."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    conf_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if architecture == "llama" else (Qwen3Config, Qwen3ForCausalLM)
    cfg = conf_cls(vocab_size=VOCAB, hidden_size=TARGET_HIDDEN, intermediate_size=2 * TARGET_HIDDEN,
                   num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2, head_dim=64,
                   max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else 0.08))
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(1.0)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(layer_scale)
        h = model.model.norm(model.model.embed_tokens.weight)
        succ = model.lm_head(h).argmax(-1)
    model.save_pretrained(str(path))
    return model, succ


def oracle_drafter(succ: torch.Tensor, seed: int = 0, accuracy: float = 0.8, parallel: bool = True,
                   draft_vocab_size: int | None = None, attn_scale: float = 3.0, noise: float = 0.05,
                   hidden_norm_scale: float = 0.1, architecture: str = "llama") -> Drafter:
    V = int(succ.shape[0])
    H = 256
    cfg = DrafterConfig(hidden_size=H, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                        intermediate_size=256, vocab_size=V, draft_vocab_size=draft_vocab_size,
                        target_hidden_size=TARGET_HIDDEN, aux_layer_ids=AUX_LAYERS,
                        mask_token_id=MASK_ID if parallel else None, parallel_depth=8 if parallel else 1,
                        max_position_embeddings=512, norm_before_residual=True, architecture=architecture)
    g = torch.Generator().manual_seed(seed)
    d = Drafter(cfg).float().eval()
    layer = d.layers[0]
    attn = layer.self_attn
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * noise)
        d.embed_tokens.weight.copy_(torch.randn(d.embed_tokens.weight.shape, generator=g))
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, d.norm):
            norm.weight.fill_(1.0)
        layer.hidden_norm.weight.fill_(hidden_norm_scale)
        eye = torch.eye(128)
        # q heads (0,1) read embedding dims 0..63 and share KV head 0 (dims 0..63); heads (2,3) dims 64..127.
        q = torch.zeros(4 * 64, 2 * H)
        for h in range(4):
            kv = h // 2
            q[h * 64:(h + 1) * 64, kv * 64:(kv + 1) * 64] = torch.eye(64) * attn_scale
        attn.q_proj.weight.copy_(q)
        if architecture == "qwen3":     # per-head RMS norms on q and k (norm weight carries the q scale)
            attn.q_proj.weight.div_(attn_scale)
            attn.q_norm.weight.fill_(attn_scale)
            attn.k_norm.weight.fill_(1.0)
        kvw = torch.zeros(2 * 64, 2 * H)
        kvw[:, :128] = eye
        attn.k_proj.weight.copy_(kvw)
        attn.v_proj.weight.copy_(kvw)
        o = torch.randn(H, 4 * 64, generator=g) / 16.0          # mixes the two head pairs into 256 features
        attn.o_proj.weight.copy_(o)
        d.mask_hidden.copy_(torch.randn(d.mask_hidden.shape, generator=g))

        # Wanted greedy map: succ for a fraction `accuracy` of the tokens, a wrong token otherwise.
        want = succ.clone()
        wrong = torch.rand(V, generator=g) >= accuracy
        want[wrong] = (succ[wrong] + 1 + torch.randint(0, V - 1, (int(wrong.sum()),), generator=g)) % V
        Vd = int(cfg.draft_vocab_size)
        if Vd < V:      # reduced draft vocabulary: the wanted ids plus random others, as d2t offsets
            keep = torch.unique(want)
            rest = torch.tensor([i for i in torch.randperm(V, generator=g).tolist() if i not in set(keep.tolist())])
            ids = torch.cat([keep, rest])[:Vd].sort().values
            d.d2t.copy_(ids - torch.arange(Vd))
        else:
            ids = torch.arange(V)
        # Features of a lone row with token t (hidden 0), as the drafter computes them.
        toks = torch.arange(V)
        out, _ = d(toks, torch.zeros(V, dtype=torch.long), torch.zeros(V, H),
                   MaskedAttention(torch.eye(V, dtype=torch.bool)))
        col = {int(t): i for i, t in enumerate(ids.tolist())}
        Y = torch.full((V, Vd), -4.0, dtype=torch.float64)
        for t in range(V):
            j = col.get(int(want[t]))
            if j is not None:
                Y[t, j] = 4.0
        W = torch.linalg.lstsq(out.double(), Y).solution.T                  # [Vd, H]
        d.lm_head.weight.copy_(W.float())
    return d


def build_family(root: Path, seed: int = 0, qwen3: bool = True) -> dict[str, str]:
    """target/, peagle/ (vLLM format), peagle_spec/ (speculators), eagle3/ (vLLM format, reduced draft
    vocabulary, autoregressive), eagle3_spec/ (speculators); with ``qwen3`` also qwen3_target/ and
    qwen3_peagle/ (a Qwen3 target and P-EAGLE head: q/k norms). Returns name -> directory."""
    root = Path(root)
    _, succ = build_target(root / "target", seed)
    peagle = oracle_drafter(succ, seed=seed + 10, parallel=True)
    eagle3 = oracle_drafter(succ, seed=seed + 20, parallel=False, draft_vocab_size=96)
    dirs = {"target": root / "target", "peagle": root / "peagle", "peagle_spec": root / "peagle_spec",
            "eagle3": root / "eagle3", "eagle3_spec": root / "eagle3_spec"}
    save_drafter(peagle, dirs["peagle"])
    save_drafter(peagle, dirs["peagle_spec"], format="speculators", verifier_name_or_path=str(dirs["target"]))
    save_drafter(eagle3, dirs["eagle3"])
    save_drafter(eagle3, dirs["eagle3_spec"], format="speculators", verifier_name_or_path=str(dirs["target"]))
    (root / "succ.json").write_text(json.dumps(succ.tolist()))
    if qwen3:
        _, qsucc = build_target(root / "qwen3_target", seed + 1, architecture="qwen3")
        dirs["qwen3_target"], dirs["qwen3_peagle"] = root / "qwen3_target", root / "qwen3_peagle"
        save_drafter(oracle_drafter(qsucc, seed=seed + 30, parallel=True, architecture="qwen3"), dirs["qwen3_peagle"])
    return {k: str(v) for k, v in dirs.items()}


def prompts(n: int = 4, seed: int = 0, lengths: tuple[int, ...] = (5, 11, 23, 40)) -> list[list[int]]:
    """Prompts of different lengths (ids >= 2: no EOS/mask token)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]
