"""The ``peagle`` speculative method for vLLM 0.34+ (model runner V2's custom-speculator registration).

vLLM 0.34 removed model runner V1 and with it P-EAGLE (``"parallel_drafting": true`` raises a ValueError
there). It lets a plugin register a speculative method instead (``register_speculative_method(name,
config_cls)``, ``vllm/v1/worker/gpu/spec_decode/speculator_config.py``): a ``SpeculatorConfig`` subclass that
sets up ``SpeculativeConfig`` and names the V2 speculator class. pedagle's plugin registers ``peagle``:

    vllm serve TARGET --speculative-config '{"method": "peagle", "model": DRAFTER, "num_speculative_tokens": 7}'

`PeagleSpeculatorConfig` is vLLM's EAGLE-3 config (the draft checkpoint is loaded, wrapped and renamed exactly
as for ``eagle3``; the target outputs its EAGLE-3 aux hidden states) with pedagle's speculator
(`v2_speculator.PedagleSpeculator`) and P-EAGLE's slot count: one drafter forward with K-1 extra query rows
per request, which the scheduler reserves and the attention backends count into their decode threshold
(``max_num_new_slots_for_drafting``). vLLM imports this module in every process, so it imports no speculator.
"""

from __future__ import annotations

from vllm.v1.worker.gpu.spec_decode.eagle.config import Eagle3SpeculatorConfig

PEAGLE_METHOD = "peagle"
SPECULATOR_CLASS = "pedagle_backends.vllm.v2_speculator.PedagleSpeculator"


class PeagleSpeculatorConfig(Eagle3SpeculatorConfig):
    """``method: "peagle"``: an EAGLE-3 head drafting K tokens per forward with pedagle's speculator."""

    base_method = "eagle3"
    speculator_class = SPECULATOR_CLASS
    parallel_drafting = True
    supports_watermarking = False

    @property
    def max_num_new_slots_for_drafting(self) -> int:
        """The K-1 MASK rows each request's drafter query adds to the target's K+1 rows."""
        return self.num_speculative_tokens - 1

    def hash_factors(self) -> list:
        return [*super().hash_factors(), PEAGLE_METHOD]


__all__ = ["PEAGLE_METHOD", "SPECULATOR_CLASS", "PeagleSpeculatorConfig"]
