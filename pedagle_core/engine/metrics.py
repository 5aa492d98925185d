"""Speculative-decoding metrics of the reference engine (counter names follow vLLM's).

Counters (one "draft" = one request verified with at least one draft token in one step):

  num_drafts              requests-steps that verified >= 1 draft token
  num_draft_tokens        draft tokens verified (after truncation at max_model_len)
  num_accepted_tokens     draft tokens accepted
  accepted_per_position   [K] list: accepted_per_position[i] = drafts whose first i+1 tokens were all
                          accepted (prefix acceptance, vLLM's num_accepted_tokens_per_pos);
                          sum(accepted_per_position) == num_accepted_tokens
  draft_tokens_per_position [K] list: drafts that had a token at position i
  mean_acceptance_length  1 + num_accepted_tokens / num_drafts (1.0 without drafts): tokens produced
                          per request per verify step, the bonus/correction token included
  steps                   engine steps = target forwards, the prefill step included
  num_prompt_tokens, num_output_tokens (emitted, after stop truncation), num_requests
  target_time_s           wall time in target forwards + verification (incl. the prefill forward)
  draft_time_s            wall time in the drafter (all drafter forwards and readouts)
  total_time_s            wall time of the whole generate() call
  draft_fraction          draft_time_s / (target_time_s + draft_time_s)
  tokens_per_s            num_output_tokens / total_time_s

Acceptance length and emitted tokens. The prefill step verifies no draft and yields one token per
request; every later step of a request verifies k >= 0 drafts and yields accepted + 1 tokens. Hence,
before stop truncation (EOS / max_new_tokens) and when every decode step verified >= 1 draft:
    emitted tokens = num_requests + num_drafts * mean_acceptance_length
i.e. for one request mean_acceptance_length == (num_output_tokens - 1) / (steps - 1).
Steps with zero drafts (mode 'none', or drafts truncated away at max_model_len) add one token each and
are counted in ``num_target_only_steps`` (request-steps), not in num_drafts. The token-0 drafts the
engine schedules when vLLM's rule skips the drafter near max_model_len (``max_len_policy='vllm'``)
count like any other drafts, as in vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecMetrics:
    K: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    draft_tokens_per_position: list[int] = field(default_factory=list)
    num_target_only_steps: int = 0
    steps: int = 0
    num_requests: int = 0
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    target_time_s: float = 0.0
    draft_time_s: float = 0.0
    total_time_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.accepted_per_position:
            self.accepted_per_position = [0] * self.K
            self.draft_tokens_per_position = [0] * self.K

    def observe_draft(self, num_draft_tokens: int, num_accepted: int) -> None:
        """One request verified ``num_draft_tokens`` drafts in one step and accepted the first ``num_accepted``."""
        if num_draft_tokens == 0:
            self.num_target_only_steps += 1
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        for i in range(num_accepted):
            self.accepted_per_position[i] += 1
        for i in range(num_draft_tokens):
            self.draft_tokens_per_position[i] += 1

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    @property
    def draft_fraction(self) -> float:
        busy = self.target_time_s + self.draft_time_s
        return self.draft_time_s / busy if busy > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_output_tokens / self.total_time_s if self.total_time_s > 0 else 0.0

    @property
    def acceptance_rate_per_position(self) -> list[float]:
        """vLLM's per-position rate: accepted_per_position[i] / num_drafts."""
        return [a / self.num_drafts if self.num_drafts else 0.0 for a in self.accepted_per_position]

    def to_dict(self) -> dict:
        return {
            "K": self.K,
            "num_requests": self.num_requests,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_output_tokens": self.num_output_tokens,
            "steps": self.steps,
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "accepted_per_position": list(self.accepted_per_position),
            "draft_tokens_per_position": list(self.draft_tokens_per_position),
            "acceptance_rate_per_position": self.acceptance_rate_per_position,
            "num_target_only_steps": self.num_target_only_steps,
            "mean_acceptance_length": self.mean_acceptance_length,
            "tokens_per_s": self.tokens_per_s,
            "target_time_s": self.target_time_s,
            "draft_time_s": self.draft_time_s,
            "total_time_s": self.total_time_s,
            "draft_fraction": self.draft_fraction,
        }
