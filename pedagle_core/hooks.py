"""The pedagle backend contract: pluggy hook specifications (project name ``"pedagle"``).

A *backend* runs P-EAGLE drafting inside some serving engine (the built-in reference engine, vLLM,
SGLang). It owns everything engine-specific: turning the engine's state after a target step into the
core's `StepInput`, giving the drafter attention over the engine's KV cache, and installing itself into
the engine. The core (`pedagle_core`) never imports a backend; backends are found through the
``pedagle.backends`` entry-point group::

    [project.entry-points."pedagle.backends"]
    reference = "pedagle_core.engine.backend:ReferenceBackend"

An entry point may name a class (instantiated without arguments), an instance or a module; it is
registered under the entry point's name. ``pedagle_core.registry.get_plugin_manager()`` loads them all (and registers the
built-in reference backend even when pedagle runs from a source checkout without entry points).
A backend implements any subset of the hooks below with ``@hookimpl``; a backend whose engine is not
installed must still import cleanly and report ``available: False`` with a reason.

Calling conventions:

* ``pm.hook.pedagle_backend_info()`` -> one dict per backend; ``pm.hook.pedagle_install(options=...)``
  -> one result per backend.
* The per-engine hooks (``pedagle_make_step_input``, ``pedagle_attention_provider``) are
  ``firstresult``: every backend returns None for an engine state that is not its own, so the owner
  answers. ``pedagle_run_case`` is routed by name the same way (``backend="reference"``).
* ``registry.get_backend(pm, name)`` returns one backend object, to call its hooks (or extra methods) directly.

Conformance results (``pedagle_run_case``), one dict::

    backend: str, mode: str, K: int, steps: int
    output_ids:            [B][n]       tokens emitted per request (the prefill token first)
    drafts:                [S][B][K]    drafts proposed at drafting step s (s = 0 right after prefill),
                                        verified by verify step s + 1; None for a finished request
    margins:               [S][B][K]    top-1 minus top-2 drafter logit of each draft (near-tie check)
    accepted:              [S][B]       drafts accepted by verify step s + 1 (None: not verified)
    accepted_per_position: [K]          vLLM's counter (prefix acceptance), summed over the run
    metrics:               dict         the engine's metrics (see ``pedagle_core.engine.metrics``)
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "pedagle"
ENTRY_POINT_GROUP = "pedagle.backends"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class BackendSpec:
    """Hook specifications every pedagle backend may implement."""

    @hookspec
    def pedagle_backend_info(self) -> dict[str, Any]:
        """Describe the backend.

        Returns ``{"name": str, "version": str, "capabilities": list[str], "available": bool,
        "reason": str}``; ``reason`` says why the backend is unavailable ("" when available).
        Capabilities are words from: ``parallel``, ``autoregressive``, ``greedy``, ``sampling``,
        ``batch``, ``cuda_graphs``, ``sliding_window``, ``attention_sinks``, ``conformance``.
        """

    @hookspec
    def pedagle_install(self, options: dict[str, Any]) -> Any:
        """Install the backend into its host engine (register plugins / models / attention functions).

        Must be idempotent (engines may load plugins more than once) and must not fail when the host
        engine is absent: return None then. ``options`` are backend-specific (may be empty).
        """

    @hookspec(firstresult=True)
    def pedagle_make_step_input(self, engine_state: Any) -> Any:
        """Translate the engine's state after one target step into a `pedagle_core.draft.StepInput`
        (flat rows with rejected ones included, ``num_rejected`` or None on prefill-only steps, the new
        tokens, the aux hidden states). Return None if ``engine_state`` belongs to another backend."""

    @hookspec(firstresult=True)
    def pedagle_attention_provider(self, engine_state: Any, drafter: Any) -> Any:
        """The `pedagle_core.draft.DraftCache` (block table, block size, max_model_len, and
        ``attention(positions, slot_mapping, request_index)``) through which ``drafter`` reads and writes
        the engine's KV cache during the step described by ``engine_state``. None if not ours."""

    @hookspec(firstresult=True)
    def pedagle_run_case(self, backend: str, case: dict[str, Any]) -> dict[str, Any] | None:
        """Run one conformance case if ``backend`` names this backend, else return None.

        ``case`` keys: target (HF dir), drafter (checkpoint dir), prompt_ids ([B][n] ints), K, mode
        ('parallel' | 'autoregressive'), steps (verify steps after prefill), dtype, device; optional
        temperature (default 0), seed, max_model_len. Returns the result dict described in the module
        docstring."""

    @hookspec(firstresult=True)
    def pedagle_replay_steps(self, backend: str, case: dict[str, Any], steps: list[Any],
                             max_model_len: int) -> dict[str, Any] | None:
        """Step-state conformance: if ``backend`` names this backend, feed ``steps`` (the reference
        engine's recorded `pedagle_core.draft.StepInput`s of one case, in order: the prefill step, then
        one per verify step) straight into this backend's drafting path, on a fresh drafter KV cache of
        ``max_model_len`` positions per request; else return None.

        ``case`` as for ``pedagle_run_case``. Returns ``{"drafts": [S][B][K] target ids, "margins":
        [S][B][K] or None, "level": str (what ran)}``. Optional: the conformance runner falls back to its
        own adapters (reference, SGLang) and reports other backends as end-to-end only."""


class CaseRunner:
    """Base of a backend that runs conformance cases: ``pedagle_run_case`` routed by ``name`` to the
    backend's own ``run_case(**case)``."""

    name: str

    @hookimpl
    def pedagle_run_case(self, backend: str, case: dict[str, Any]) -> dict[str, Any] | None:
        if backend != self.name:
            return None
        return self.run_case(**case)

    def run_case(self, **case: Any) -> dict[str, Any]:
        raise NotImplementedError


__all__ = ["PROJECT", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "BackendSpec", "CaseRunner"]
