"""What differs between the vLLM releases the backend supports (``SUPPORTED_VLLM``, 0.26-0.34): one place.

**Which machinery exists** is detected by feature (module and attribute presence, no version strings):

* `has_v1_parallel_drafting`: model runner V1's EAGLE proposer with parallel drafting
  (``vllm.v1.spec_decode.llm_base_proposer.SpecDecodeBaseProposer.set_inputs_first_pass``), the one pedagle's
  V1 hooks patch: vLLM 0.26-0.33; 0.34 removed the V1 GPU runner and with it P-EAGLE;
* `has_v2_runner`: model runner V2's speculators (``vllm.v1.worker.gpu.spec_decode.speculator``), all of 0.26-0.34;
* `has_speculator_registration`: V2's registration API for custom speculators
  (``speculator_config.register_speculative_method``, ``SpeculatorConfig``): 0.34;
* `runner_in_use`: which runner a built ``VllmConfig`` selected (``VllmConfig.use_v2_model_runner``, 0.26-0.33;
  0.34 has no V1 runner, so V2; on 0.26-0.33
  P-EAGLE falls back to V1 unless ``VLLM_USE_V2_MODEL_RUNNER=1``, an autoregressive EAGLE-3 head of a dense
  target runs on V2 by default on the GPU; vLLM's CPU build always runs V1, V2 needs Triton);
* `v2_propose_params`: the parameters of V2's ``BaseSpeculator.propose`` (0.26: ``num_tokens_across_dp``; 0.32+:
  ``dp_sync_state`` and ``num_speculative_tokens``; ``next_prefill_tokens`` is ``[max_num_reqs]`` on 0.26 and
  ``[lookahead, max_num_reqs]`` later).

**Behaviours** that no feature reveals are decided from the installed version (no vLLM import):

* the MASK-token lookup of vLLM's proposer (`vllm_mask_token`): 0.26/0.27 read ``dflash_config.mask_token_id``,
  ``pard_token``, ``ptd_token_id`` only; 0.28+ read ``mask_token_id`` and ``dspark_noise_token_id`` first;
* the speculative config of a speculators checkpoint served as the model (``vllm serve SPECULATORS_DIR``,
  ``LLM(model=SPECULATORS_DIR, speculative_config=...)``; `speculators_num_speculative_tokens`): 0.26-0.28
  build it from the checkpoint alone and drop the user's ``--speculative-config`` (so its
  ``num_speculative_tokens`` is ignored: the checkpoint's ``speculative_tokens`` is used); 0.29+ apply the
  user's values over the checkpoint's (vLLM's ``transformers_utils.config.maybe_override_with_speculators``);
* on that same path 0.33+ accept only a *remote* verifier (`speculators_verifier_refused`): a checkpoint whose
  ``speculators_config.verifier.name_or_path`` is a local directory (or anything not a hub repository id) is
  refused ("Speculators verifier must name a remote model repository"; vLLM 0.33.0/0.34.0
  ``transformers_utils/config.py`` 861-873 / 906-918). Passing the target as the model and the checkpoint as
  ``--speculative-config '{"model": SPECULATORS_DIR, ...}'`` works on every release.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any

Version = tuple[int, int, int]

V1_PROPOSER_MODULE = "vllm.v1.spec_decode.llm_base_proposer"
V2_SPECULATOR_MODULE = "vllm.v1.worker.gpu.spec_decode.speculator"
V2_SPECULATOR_CONFIG_MODULE = "vllm.v1.worker.gpu.spec_decode.speculator_config"
V2_MODEL_RUNNER_MODULE = "vllm.v1.worker.gpu.model_runner"


def _module_exists(name: str) -> bool:
    """Whether vLLM has module ``name`` (its parent packages are imported, the module itself is not)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_v1_parallel_drafting() -> bool:
    """Model runner V1's EAGLE proposer with parallel drafting (what pedagle's V1 hooks patch): 0.26-0.33."""
    if not _module_exists(V1_PROPOSER_MODULE):
        return False
    proposer = getattr(importlib.import_module(V1_PROPOSER_MODULE), "SpecDecodeBaseProposer", None)
    return proposer is not None and hasattr(proposer, "set_inputs_first_pass")


def has_v2_runner() -> bool:
    """Model runner V2 with its speculator interface (``BaseSpeculator``): every supported release."""
    return _module_exists(V2_SPECULATOR_MODULE) and _module_exists(V2_MODEL_RUNNER_MODULE)


def has_speculator_registration() -> bool:
    """V2's custom-speculator registration (``register_speculative_method``, ``SpeculatorConfig``): 0.34."""
    if not _module_exists(V2_SPECULATOR_CONFIG_MODULE):
        return False
    module = importlib.import_module(V2_SPECULATOR_CONFIG_MODULE)
    return hasattr(module, "register_speculative_method") and hasattr(module, "SpeculatorConfig")


PEAGLE_METHOD = "peagle"
"""The speculative method pedagle registers on releases with V2's speculator registration (`v2_config`)."""


def has_v1_runner() -> bool:
    """Model runner V1's EAGLE proposer module exists (without importing it: cheap enough for every process)."""
    return _module_exists(V1_PROPOSER_MODULE)


def wants_parallel_drafting(speculative_config: Any) -> bool:
    """P-EAGLE was asked for: ``parallel_drafting: true`` (0.26-0.33) or the ``peagle`` method (0.34+)."""
    return bool(getattr(speculative_config, "parallel_drafting", False)) or \
        getattr(speculative_config, "custom_method", None) == PEAGLE_METHOD


def runner_in_use(vllm_config: Any) -> str:
    """``"v2"`` when this ``VllmConfig`` runs model runner V2, else ``"v1"``: ``VllmConfig.use_v2_model_runner``
    where the release has it (0.26-0.33); without it, V2 when the V1 runner is gone (0.34), else V1."""
    if hasattr(vllm_config, "use_v2_model_runner"):
        return "v2" if bool(vllm_config.use_v2_model_runner) else "v1"
    return "v1" if has_v1_runner() else "v2"


def v2_propose_params() -> tuple[str, ...]:
    """The parameter names of the installed V2 ``BaseSpeculator.propose`` (``self`` first)."""
    module = importlib.import_module(V2_SPECULATOR_MODULE)
    return tuple(inspect.signature(module.BaseSpeculator.propose).parameters)


def v2_block_size(block_tables: Any, group: int) -> int:
    """The block size the block table of KV-cache ``group`` is indexed with: ``kernel_block_sizes`` (0.26, where
    attention kernels may split a cache block) else ``block_sizes`` (0.32+)."""
    sizes = getattr(block_tables, "kernel_block_sizes", None) or block_tables.block_sizes
    return int(sizes[group])


def v2_cudagraph_manager(vllm_config: Any, device: Any, mode: Any, query_len: int, max_reqs: int) -> Any:
    """V2's ``CudaGraphManager`` for uniform decode batches of ``query_len`` rows per request: 0.26-0.33 take
    ``decode_query_len``, 0.34 ``decode_query_lens`` ({query length: most requests})."""
    from vllm.v1.worker.gpu.cudagraph_utils import CudaGraphManager

    params = inspect.signature(CudaGraphManager.__init__).parameters
    if "decode_query_lens" in params:
        return CudaGraphManager(vllm_config, device, mode, decode_query_lens={query_len: max_reqs})
    return CudaGraphManager(vllm_config, device, mode, decode_query_len=query_len)


def v2_propose_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A V2 ``propose(*args, **kwargs)`` call (without ``self``) as {parameter: value}, defaults filled in,
    whatever the installed release's parameter order; ``next_prefill_tokens`` as vLLM passed it ([max_reqs]
    on 0.26, [lookahead, max_reqs] later: `v2_inputs.next_token_ids` takes both)."""
    module = importlib.import_module(V2_SPECULATOR_MODULE)
    bound = inspect.signature(module.BaseSpeculator.propose).bind(None, *args, **kwargs)
    bound.apply_defaults()
    out = dict(bound.arguments)
    out.pop("self", None)
    return out

MASK_TOKEN_ID_SINCE: Version = (0, 28, 0)
"""The first vLLM release whose proposer reads ``mask_token_id`` and ``dspark_noise_token_id``."""

SPECULATORS_USER_CONFIG_SINCE: Version = (0, 29, 0)
"""The first vLLM release that applies the user's speculative config over a speculators checkpoint's."""


SPECULATORS_REMOTE_VERIFIER_SINCE: Version = (0, 33, 0)
"""The first vLLM release that refuses a speculators checkpoint served as the model unless its verifier names a
remote (hub) repository."""

_REPO_ID = re.compile(r"[A-Za-z0-9_.\-]{1,96}(/[A-Za-z0-9_.\-]{1,96})?")


def speculators_verifier_refused(verifier: Any, version: Version) -> bool:
    """Whether vLLM ``version`` refuses to serve a speculators checkpoint as the model (``vllm serve
    SPECULATORS_DIR``) whose ``speculators_config.verifier.name_or_path`` is ``verifier``: 0.33+ unless it is a
    hub repository id that is no existing local path (vLLM's ``maybe_override_with_speculators``:
    ``validate_repo_id`` and ``Path.exists``)."""
    if version < SPECULATORS_REMOTE_VERIFIER_SINCE:
        return False
    if not isinstance(verifier, str) or not _REPO_ID.fullmatch(verifier):
        return True
    if "--" in verifier or ".." in verifier or verifier.startswith(("-", ".")) or verifier.endswith(("-", ".", ".git")):
        return True
    return Path(verifier).exists() or Path(verifier).is_symlink()


def checkpoint_verifier(config: dict[str, Any]) -> str | None:
    """``speculators_config.verifier.name_or_path`` of a speculators ``config.json`` (or None)."""
    return ((config.get("speculators_config") or {}).get("verifier") or {}).get("name_or_path")


def vllm_mask_token(hf_config: Any, version: Version) -> int | None:
    """The mask token the proposer of vLLM ``version`` will use (its lookup order) for this drafter config."""
    dflash = getattr(hf_config, "dflash_config", None)
    if dflash and "mask_token_id" in dflash:
        return dflash["mask_token_id"]
    newer = version >= MASK_TOKEN_ID_SINCE
    if newer and getattr(hf_config, "mask_token_id", None) is not None:
        return hf_config.mask_token_id
    for key in ("dspark_noise_token_id", "pard_token", "ptd_token_id") if newer else ("pard_token", "ptd_token_id"):
        if hasattr(hf_config, key):
            return getattr(hf_config, key)
    return None


def speculators_num_speculative_tokens(requested: int | None, checkpoint: int | None,
                                       version: Version) -> int | None:
    """The K that vLLM ``version`` drafts with when a speculators checkpoint (whose
    ``speculators_config.proposal_methods[0].speculative_tokens`` is ``checkpoint``) is served as the model
    and the user asked for ``requested`` (None: not given)."""
    if requested is not None and version >= SPECULATORS_USER_CONFIG_SINCE:
        return requested
    return checkpoint


def checkpoint_speculative_tokens(config: dict[str, Any]) -> int | None:
    """``speculators_config.proposal_methods[0].speculative_tokens`` of a speculators ``config.json`` (or None)."""
    methods = (config.get("speculators_config") or {}).get("proposal_methods") or [{}]
    value = methods[0].get("speculative_tokens")
    return None if value is None else int(value)


__all__ = ["PEAGLE_METHOD", "has_v1_runner", "wants_parallel_drafting", "has_v1_parallel_drafting", "has_v2_runner",
           "has_speculator_registration", "runner_in_use", "v2_propose_params", "v2_propose_arguments",
           "v2_block_size", "v2_cudagraph_manager", "MASK_TOKEN_ID_SINCE", "SPECULATORS_USER_CONFIG_SINCE",
           "vllm_mask_token", "speculators_num_speculative_tokens", "checkpoint_speculative_tokens",
           "SPECULATORS_REMOTE_VERIFIER_SINCE", "speculators_verifier_refused", "checkpoint_verifier"]
