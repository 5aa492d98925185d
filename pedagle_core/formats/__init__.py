"""Checkpoint formats: the vLLM / published-head format (canonical) and the speculators format.

Readers translate either format into the one in-memory `DrafterConfig` and the `Drafter`'s weight names;
writers translate back. Loading is strict: a missing, misshapen, mistyped or non-finite tensor, a d2t
leaving the target vocabulary, or a config that disagrees with its weights raises `CheckpointError`
naming the file, the field or tensor, and the expected value. Shared embeddings / lm_head come from a
target only when one is passed.

    detect_format(path) -> "vllm" | "speculators"
    read_config(path) -> (DrafterConfig, format)
    load_drafter(path, target=None, dtype=None, device="cpu", strict=True, mode="auto") -> Drafter
    save_drafter(drafter, path, format="vllm", verifier_name_or_path=None, dtype=None)
    convert(src, dst, to, verifier_name_or_path=None, dtype=None)
    describe(path) -> dict   (``pedagle inspect --json``)

Serving backends (vLLM, SGLang) build the drafter module themselves (their engine's device, dtype and
attention layers) and share embed_tokens / lm_head with the target themselves, so they load without a
target, in two steps:
    prepare(path, mode, strict) -> ReadResult          (config + checked tensor directory, no data): when
                                                       the engine builds the module
    load_into_drafter(drafter, read, strict, exclude_prefixes) -> loaded names: when it loads weights
                                                       (tensors value-checked and copied in; only
                                                       embed_tokens / lm_head / d2t / mask_hidden may be absent)
    load_checked_tensors(read, strict) -> {name: tensor}   (the tensor data alone: canonical names, value-checked)
"""

from .errors import CheckpointError, Problem
from .common import ReadResult
from .load import (FORMATS, MODES, build_drafter, convert, describe, detect_format, drafter_tensors,
                   load_checked_tensors, load_drafter, load_into_drafter, prepare, read_checkpoint, read_config,
                   save_drafter)

__all__ = [
    "CheckpointError", "Problem", "ReadResult", "FORMATS", "MODES", "detect_format", "read_config",
    "read_checkpoint", "prepare", "load_checked_tensors", "load_into_drafter", "load_drafter", "save_drafter", "convert", "describe",
    "build_drafter", "drafter_tensors",
]
