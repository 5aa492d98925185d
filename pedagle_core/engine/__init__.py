"""The reference backend: a standalone lossless speculative-decoding engine on the pedagle core.

    target.py   a transformers causal LM over pedagle's static KV cache ("pedagle" attention function)
    verify.py   greedy acceptance and speculative rejection sampling
    engine.py   SpecEngine: verify -> accept -> draft (parallel | autoregressive | none)
    graphs.py   fixed-shape greedy decode steps, CUDA graphs on CUDA
    metrics.py  vLLM-named speculative-decoding counters
    backend.py  ReferenceBackend, the `pedagle.backends` entry point ("reference")
    cli.py      `pedagle generate`, `pedagle bench`

Example::

    from pedagle_core.engine import SpecEngine, SamplingParams, load_hf_target
    from pedagle_core.formats import load_drafter
    target = load_hf_target("models/target", dtype="bfloat16", device="cuda")
    drafter = load_drafter("models/drafter", target=target, device="cuda", mode="parallel")
    engine = SpecEngine(target, drafter, mode="parallel", K=5)
    result = engine.generate([[1, 2, 3]], max_new_tokens=64, sampling=SamplingParams(temperature=0))
    result.output_ids, result.metrics.to_dict()
"""

from .engine import MODES, GenerateResult, SpecEngine, StepRecord, VerifyState, make_step_input
from .metrics import SpecMetrics
from .target import EngineError, TargetModel, load_hf_target, register_attention
from .verify import SamplingParams, target_probs, verify_greedy, verify_sampling

__all__ = ["MODES", "GenerateResult", "SpecEngine", "StepRecord", "VerifyState", "make_step_input", "SpecMetrics",
           "EngineError", "TargetModel", "load_hf_target", "register_attention", "SamplingParams", "target_probs",
           "verify_greedy", "verify_sampling"]
