"""`TrainableDrafter`: the drafter as the trainer runs it (the module DDP / FSDP2 wrap).

It owns everything that touches parameters in one forward, so distributed wrappers see every
parameter used inside ``forward``:

* embeddings: ``drafter.embed_tokens`` is initialised from the target and frozen; the MASK token's
  row is a separate trainable parameter ``mask_embed`` (written back into ``embed_tokens`` on export).
  With ``train_embeddings=True`` the whole table trains instead.
* hidden inputs: depth-0 rows take ``fc(aux)``, MASK rows ``fc(mask_hidden)`` (the drafter's
  ``project_hidden`` / ``mask_hidden_projected``), exactly the inputs of inference.

Rows of one forward are ordered depth-0 first: the first ``aux.shape[0]`` rows are real rows, the
rest MASK rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention import AttentionProvider
from ..model import Drafter


class TrainableDrafter(nn.Module):
    def __init__(self, drafter: Drafter, parallel: bool, train_embeddings: bool = False) -> None:
        super().__init__()
        self.drafter = drafter
        self.parallel = parallel
        self.train_embeddings = train_embeddings
        mid = drafter.config.mask_token_id
        if parallel and mid is None:
            raise ValueError("parallel (P-EAGLE) training needs config field 'mask_token_id'")
        drafter.embed_tokens.weight.requires_grad_(train_embeddings)
        drafter.mask_hidden.requires_grad_(parallel)
        if parallel and not train_embeddings:
            self.mask_embed = nn.Parameter(drafter.embed_tokens.weight.detach()[mid].clone())

    def forward(self, input_ids: Tensor, positions: Tensor, aux: Tensor | None, attn: AttentionProvider,
                logit_rows: Tensor | None = None, hidden: Tensor | None = None,
                return_feedback: bool = False):
        """input_ids/positions: [E]; aux: [E0, n_aux*Ht] for the first E0 (depth-0) rows, the rest are MASK
        rows. With ``hidden`` [E, H] instead (autoregressive test-time training), every row is a real-token
        row whose hidden input is given (the drafter's fed-back hidden of the previous step).
        Returns draft logits [R, Vd] of ``logit_rows`` or, when None, the final hidden [E, H]; with
        ``return_feedback`` also the fed-back hidden [E, H]."""
        d = self.drafter
        E = input_ids.shape[0]
        embeds = d.embed_tokens(input_ids)
        if hidden is not None:
            E0 = E
            hidden = hidden + 0.0 * d.fc.weight.sum()              # keep fc in the graph (DDP / FSDP)
        else:
            E0 = aux.shape[0]
            hidden = d.project_hidden(aux.to(d.fc.weight.dtype))
        if self.parallel:
            mh = d.mask_hidden_projected()                                         # [H]
            if E > E0:
                hidden = torch.cat([hidden, mh.to(hidden.dtype).expand(E - E0, -1)], dim=0)
            else:                                 # keep every parameter in the graph (DDP / FSDP)
                hidden = hidden + 0.0 * mh.sum()
            if hasattr(self, "mask_embed"):
                me = self.mask_embed.to(embeds.dtype)
                if E > E0:
                    embeds = torch.cat([embeds[:E0], me.expand(E - E0, -1)], dim=0)
                else:
                    embeds = embeds + 0.0 * me.sum()
        out, feedback = d(input_ids, positions, hidden, attn, input_embeds=embeds)
        res = out if logit_rows is None else d.compute_logits(out[logit_rows])
        return (res, feedback) if return_feedback else res


def export_state_dict(state: dict[str, Tensor], mask_token_id: int | None) -> dict[str, Tensor]:
    """A `TrainableDrafter` state dict -> the plain `Drafter` state dict (MASK row written back)."""
    out = {k[len("drafter."):]: v for k, v in state.items() if k.startswith("drafter.")}
    if "mask_embed" in state and mask_token_id is not None:
        emb = out["embed_tokens.weight"].clone()
        emb[mask_token_id] = state["mask_embed"].to(emb.dtype)
        out["embed_tokens.weight"] = emb
    return out
