"""Which SGLang test subset this pytest run selects (``--sglang-cases``, set by conftest.py before collection).

``all`` (default): the whole suite. ``versions``: only the tests marked ``sglang_versions``, the ones that
exercise a part of SGLang the backend touches whose behaviour differs, or could, between the supported
releases (`pedagle_backends.sglang.compat`), with the engine runs cut to one PEAGLE configuration beside
target-only; CI runs it on the oldest supported SGLang (0.5.17) next to the full suite on the newest.
"""

from __future__ import annotations

MARK = "sglang_versions"
CHOICES = ("all", "versions")
CASES = "all"


def versions_only() -> bool:
    """Whether this run is the ``--sglang-cases versions`` subset."""
    return CASES == "versions"
