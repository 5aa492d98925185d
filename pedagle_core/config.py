"""The drafter configuration: one in-memory description of a P-EAGLE / EAGLE-3 head.

Every checkpoint format (vLLM / published heads, speculators) is translated to and from this
dataclass at the edge (`pedagle_core.formats`); nothing else in the core reads format-specific keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("llama", "qwen3")


class ConfigError(ValueError):
    """A drafter configuration is invalid. The message names the file/field and the expected value."""


@dataclass
class DrafterConfig:
    """Configuration of an EAGLE-3 drafter that can draft in parallel (P-EAGLE) or autoregressively.

    Shapes that follow from it:
      fc:          [hidden_size, n_aux * target_hidden_size]
      mask_hidden: [1, 1, n_aux * target_hidden_size]   (lives before fc)
      layer 0 q/k/v input width: 2 * hidden_size        ([norm(embed) ; hidden_norm(h)])
      lm_head:     [draft_vocab_size, hidden_size], d2t: [draft_vocab_size] offsets to target ids
    """

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int | None = None
    draft_vocab_size: int | None = None
    target_hidden_size: int | None = None
    aux_layer_ids: tuple[int, ...] | None = None
    num_aux_hidden_states: int = 3
    mask_token_id: int | None = None
    parallel_depth: int = 1
    rms_norm_eps: float = 1e-6
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    architecture: str = "llama"
    norm_before_residual: bool = False
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    # Weights that a head may share with its target (taken from the target only when one is passed).
    has_embed_tokens: bool = True
    has_lm_head: bool = True

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.draft_vocab_size is None:
            self.draft_vocab_size = self.vocab_size
        if self.target_hidden_size is None:
            self.target_hidden_size = self.hidden_size
        if self.aux_layer_ids is not None:
            self.aux_layer_ids = tuple(int(i) for i in self.aux_layer_ids)
            self.num_aux_hidden_states = len(self.aux_layer_ids)
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
        self.validate()

    # ----------------------------------------------------------------- derived sizes
    @property
    def n_aux(self) -> int:
        return self.num_aux_hidden_states

    @property
    def fc_input_size(self) -> int:
        return self.n_aux * int(self.target_hidden_size)

    @property
    def qk_norm(self) -> bool:
        """Qwen3-style heads normalise q and k per head before RoPE."""
        return self.architecture == "qwen3"

    def layer_window(self, layer_idx: int) -> int | None:
        """Sliding window of one drafter layer, or None for full attention."""
        if self.layer_types is None:
            return None
        return self.sliding_window if self.layer_types[layer_idx] == "sliding_attention" else None

    # ----------------------------------------------------------------- checks
    def validate(self, source: str = "config") -> None:
        def bad(field_name: str, expected: str) -> ConfigError:
            return ConfigError(f"{source}: field '{field_name}' = {getattr(self, field_name)!r}; expected {expected}")

        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "vocab_size", "head_dim", "draft_vocab_size", "target_hidden_size",
                     "parallel_depth", "num_aux_hidden_states"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise bad(name, "a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_key_value_heads", f"a divisor of num_attention_heads={self.num_attention_heads}")
        if self.draft_vocab_size > self.vocab_size:
            raise bad("draft_vocab_size", f"<= vocab_size={self.vocab_size} (the target vocabulary)")
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
            raise bad("mask_token_id", f"an id in [0, {self.vocab_size}) (inside the vocabulary)")
        if self.architecture not in ARCHITECTURES:
            raise bad("architecture", f"one of {ARCHITECTURES}")
        if self.hidden_act != "silu":
            raise bad("hidden_act", "'silu' (Llama-style SwiGLU layers)")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise bad("layer_types", f"a list of num_hidden_layers={self.num_hidden_layers} entries")
            kinds = {"full_attention", "sliding_attention"}
            if not set(self.layer_types) <= kinds:
                raise bad("layer_types", f"entries from {sorted(kinds)}")
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise bad("sliding_window", "a positive window when layer_types has 'sliding_attention'")
        rope_type = self.rope_parameters.get("rope_type", "default")
        if rope_type not in ("default", "linear", "llama3", "yarn"):
            raise ConfigError(f"{source}: field 'rope_parameters.rope_type' = {rope_type!r}; "
                              "expected one of 'default', 'linear', 'llama3', 'yarn'")

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["aux_layer_ids"] is not None:
            d["aux_layer_ids"] = list(d["aux_layer_ids"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "DrafterConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; expected only {sorted(names)}")
        try:
            return cls(**d)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"{source}: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
