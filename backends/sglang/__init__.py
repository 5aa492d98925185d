"""pedagle's SGLang backend: P-EAGLE (parallel-drafting EAGLE-3) as SGLang's ``PEAGLE`` speculative algorithm.

Installed through the ``sglang.srt.plugins`` entry point ``pedagle`` (``plugin.register``), which SGLang runs in
every process it starts. Then::

    python -m sglang.launch_server --model TARGET --speculative-algorithm PEAGLE \
        --speculative-draft-model-path DRAFTER --speculative-num-draft-tokens K+1

Modules (``plugin``, ``spec_algo``, ``compat``, ``cpu`` and ``backend`` are imported before a PEAGLE worker is built):

* ``compat``     every difference between the supported SGLang releases, detected by feature;
* ``plugin``     the entry point: version check, ``SpeculativeAlgorithm.register("PEAGLE", ...)``, SGLang hooks
                 (draft architecture rename, decode KV reserve); idempotent per process;
* ``spec_algo``  the ``spec_class`` (EAGLE-3 predicates, server-argument defaults and refusals);
* ``worker``     ``PEagleWorkerV2`` / ``PEagleDraftWorker``: SGLang's EAGLE V2 worker with ONE drafter forward
                 per step (bonus row + K-1 MASK rows folded into the draft-extend after verify);
* ``model``, ``attention``  the drafter (pedagle_core's model, loaded by pedagle_core.formats) on SGLang's
                 attention backends and draft KV pool;
* ``layout``, ``drafting``  the per-step bookkeeping as pure functions over plain tensors;
* ``backend``    the ``pedagle.backends`` entry point (``SglangBackend``: pluggy hooks).
"""

ALGORITHM = "PEAGLE"
SUPPORTED_SGLANG = ">=0.5.17,<0.5.24"
"""The SGLang releases this backend was built and checked against (it subclasses EAGLE V2 worker internals
that change between releases; their differences are `compat`'s)."""

__all__ = ["ALGORITHM", "SUPPORTED_SGLANG"]
