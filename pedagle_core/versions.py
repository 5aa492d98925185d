"""Engine release ranges: each backend states the engine releases it supports and refuses others with a
clear message. Parsing only; nothing here imports an engine."""

from __future__ import annotations

_OPS = (">=", "<=", "==", "!=", "<", ">")


def parse_version(version: str) -> tuple[int, int, int]:
    """'0.5.23', '0.5.23.post1', '0.32.0+cpu' -> (major, minor, patch); missing parts are 0."""
    out = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits) if digits else 0)
    while len(out) < 3:
        out.append(0)
    return out[0], out[1], out[2]


def version_in_range(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies every comma-separated clause of ``spec`` (e.g. '>=0.5.23,<0.5.24')."""
    v = parse_version(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op = next((o for o in _OPS if clause.startswith(o)), None)
        if op is None:
            raise ValueError(f"version spec clause {clause!r}; expected one of {_OPS} followed by a version")
        b = parse_version(clause[len(op):].strip())
        ok = {">=": v >= b, "<=": v <= b, "==": v == b, "!=": v != b, "<": v < b, ">": v > b}[op]
        if not ok:
            return False
    return True


__all__ = ["parse_version", "version_in_range"]
