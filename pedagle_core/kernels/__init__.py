"""Triton kernels of pedagle_core. Each kernel module sits beside a plain-PyTorch reference that the
tests compare it against; import the modules explicitly (nothing is imported here, so that importing
the package never needs Triton and TRITON_INTERPRET can still be set before a kernel is defined).

* `expand_triton` — the fused input expansion of one speculative step (reference: `pedagle_core.expand`).
"""
