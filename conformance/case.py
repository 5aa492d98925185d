"""Conformance cases: one small JSON file per case, next to (or pointing at) the models it needs.

A case file (``schema: "pedagle-conformance-case/1"``)::

    name, description, tags
    target          HF target directory, relative to the case file (or absolute)
    drafter         drafter checkpoint directory (any format pedagle reads), relative likewise
    drafter_format  "vllm" | "speculators" (informational; checked when recording)
    mode            "parallel" (P-EAGLE) | "autoregressive" (EAGLE-3)
    K, steps        drafts per step; verify steps after the prefill (drafting steps 0 .. steps-1)
    dtype, device   what the case computes in (device is overridden by ``run --device``)
    prompt_ids      [B][n] token ids (a batch; lengths may differ)
    max_model_len   null = each backend's default for the case
    tie_margin      null = the default for ``dtype`` (`DEFAULT_TIE_MARGINS`)
    expected        null until ``pedagle conformance record`` fills it (see `record.py`):
                    recorded_with, output_ids [B][n], drafts [S][B][K], margins [S][B][K],
                    accepted [S][B], accepted_per_position [K], min_margin, max_model_len,
                    models {target, drafter: short sha256 of config + weights} (a case whose models
                    changed since is reported "not run: stale", to be re-recorded)
    step_state      file name (beside the case) of the recorded step inputs, null until recorded

Indexing everywhere: step s = drafting step s (s = 0 right after the prefill; verified by verify step
s+1), request r = index into ``prompt_ids``, position p = draft slot 0..K-1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pedagle_core.engine.lossless import TIE_MARGINS

SCHEMA = "pedagle-conformance-case/1"
MODES = ("parallel", "autoregressive")

# Near-tie margins (reference top-1 minus top-2 drafter logit) under which a differing draft is a near-tie,
# not a failure, by compute dtype: `pedagle_core.engine.lossless.TIE_MARGINS` (the rationale is there).
# A case may set its own ``tie_margin``; ``run --tie-margin`` overrides both.
DEFAULT_TIE_MARGINS = TIE_MARGINS
# How a fresh recording is compared with a committed one (`compare.compare_recordings`: ``record --verify``
# and the test suite). Ids (drafts, accepted counts, emitted tokens), the max_model_len and the model
# fingerprints must be equal; the recorded margins (and min_margin) may differ by
#     |fresh - committed| <= MARGIN_RTOL * |committed| + MARGIN_ATOL
# because torch/transformers versions and thread counts change float32 reduction orders: measured between
# transformers 5.23 and 5.24 on the bundled float32 cases, up to 1e-4 relative (1.7e-5 absolute) on margins
# >= 0.02. MARGIN_ATOL covers margins printed with 7 significant digits near 0. The step-state file's aux
# hidden states get STEP_STATE_RTOL / STEP_STATE_ATOL (torch.allclose; measured: up to 1.5e-5 absolute).
# ``recorded_with`` (versions, device) is information, never compared.
MARGIN_RTOL = 1e-3
MARGIN_ATOL = 1e-5
STEP_STATE_RTOL = 1e-3
STEP_STATE_ATOL = 1e-4
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp64": "float64",
                 "torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


class CaseError(ValueError):
    """A case file is invalid (the message names the file and the field)."""


@dataclass
class Case:
    name: str
    target: str
    drafter: str
    prompt_ids: list[list[int]]
    K: int
    mode: str = "parallel"
    steps: int = 6
    dtype: str = "float32"
    device: str = "cpu"
    description: str = ""
    drafter_format: str | None = None
    max_model_len: int | None = None
    tie_margin: float | None = None
    tags: list[str] = field(default_factory=list)
    expected: dict[str, Any] | None = None
    step_state: str | None = None
    path: Path | None = None            # the case file (not serialised)

    # ------------------------------------------------------------------ paths
    @property
    def base(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.base / p).resolve()

    @property
    def target_path(self) -> Path:
        return self.resolve(self.target)

    @property
    def drafter_path(self) -> Path:
        return self.resolve(self.drafter)

    @property
    def step_state_path(self) -> Path | None:
        return self.resolve(self.step_state) if self.step_state else None

    def stale_models(self, which: tuple[str, ...] = ("target", "drafter")) -> list[str]:
        """Model directories whose weights/config changed since the expected result was recorded."""
        rec = (self.expected or {}).get("models") or {}
        out = []
        for k in which:
            p = self.target_path if k == "target" else self.drafter_path
            if k in rec and (p / "config.json").is_file() and model_digest(p) != rec[k]:
                out.append(str(p))
        return out

    def missing_models(self) -> list[str]:
        """Model directories of the case that are not there (e.g. a bundled family not built yet)."""
        return [str(p) for p in (self.target_path, self.drafter_path) if not (p / "config.json").is_file()]

    # ------------------------------------------------------------------ derived
    @property
    def batch_size(self) -> int:
        return len(self.prompt_ids)

    @property
    def dtype_name(self) -> str:
        return DTYPE_ALIASES.get(self.dtype, self.dtype)

    def tie(self, override: float | None = None) -> float:
        if override is not None:
            return float(override)
        if self.tie_margin is not None:
            return float(self.tie_margin)
        return DEFAULT_TIE_MARGINS.get(self.dtype_name, 1e-4)

    def run_args(self, device: str | None = None, prompt_ids: list[list[int]] | None = None,
                 steps: int | None = None) -> dict[str, Any]:
        """The ``case`` dict of the ``pedagle_run_case`` hook."""
        args: dict[str, Any] = {"target": str(self.target_path), "drafter": str(self.drafter_path),
                                "prompt_ids": [list(map(int, p)) for p in (prompt_ids or self.prompt_ids)],
                                "K": int(self.K), "mode": self.mode,
                                "steps": int(self.steps if steps is None else steps),
                                "dtype": self.dtype_name, "device": device or self.device, "temperature": 0.0,
                                "seed": 0}
        if self.max_model_len is not None:
            args["max_model_len"] = int(self.max_model_len)
        return args

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA, "name": self.name, "description": self.description,
                             "tags": list(self.tags), "target": self.target, "drafter": self.drafter,
                             "drafter_format": self.drafter_format, "mode": self.mode, "K": self.K,
                             "steps": self.steps, "dtype": self.dtype, "device": self.device,
                             "max_model_len": self.max_model_len, "tie_margin": self.tie_margin,
                             "prompt_ids": self.prompt_ids, "step_state": self.step_state,
                             "expected": self.expected}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> "Case":
        where = str(path) if path else "case"
        if d.get("schema") != SCHEMA:
            raise CaseError(f"{where}: field 'schema' = {d.get('schema')!r}; expected {SCHEMA!r}")
        for k in ("name", "target", "drafter", "prompt_ids", "K"):
            if k not in d:
                raise CaseError(f"{where}: missing field {k!r}")
        fields = ("name", "target", "drafter", "prompt_ids", "K", "mode", "steps", "dtype", "device", "description",
                  "drafter_format", "max_model_len", "tie_margin", "tags", "expected", "step_state")
        kw = {k: d[k] for k in fields if d.get(k) is not None}
        c = cls(**kw, path=path)
        c.validate(where)
        return c

    def validate(self, where: str = "case") -> None:
        if self.mode not in MODES:
            raise CaseError(f"{where}: field 'mode' = {self.mode!r}; expected one of {MODES}")
        if not isinstance(self.K, int) or self.K < 1:
            raise CaseError(f"{where}: field 'K' = {self.K!r}; expected an integer >= 1")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise CaseError(f"{where}: field 'steps' = {self.steps!r}; expected an integer >= 1")
        if not self.prompt_ids or not all(isinstance(p, list) and p for p in self.prompt_ids):
            raise CaseError(f"{where}: field 'prompt_ids' must be a non-empty list of non-empty token-id lists")
        if self.dtype_name not in DEFAULT_TIE_MARGINS:
            raise CaseError(f"{where}: field 'dtype' = {self.dtype!r}; expected one of {sorted(DEFAULT_TIE_MARGINS)}")


# ---------------------------------------------------------------------------------------------- files
def model_digest(path: Path) -> str:
    """Short sha256 over a model directory's config.json and weight files (names and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.name == "config.json" or f.suffix == ".safetensors":
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _compact(text: str) -> str:
    """Put innermost JSON lists (numbers / null only) on one line."""
    pat = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null)(?:,\s*(?:-?[\d.eE+-]+|null))*)\s*\]")
    return pat.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def dumps_case(case: Case) -> str:
    return _compact(json.dumps(case.to_dict(), indent=1)) + "\n"


def save_case(case: Case, path: Path | None = None) -> Path:
    p = Path(path or case.path)
    if p is None:
        raise CaseError(f"case {case.name!r} has no path to save to")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dumps_case(case))
    case.path = p
    return p


def load_case(path: str | Path) -> Case:
    p = Path(path).resolve()
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CaseError(f"{p}: not valid JSON ({e})") from e
    return Case.from_dict(d, p)


def is_case_file(p: Path) -> bool:
    if p.suffix != ".json" or p.name == "config.json":
        return False
    try:
        with open(p) as f:
            head = f.read(200)
    except OSError:
        return False
    return SCHEMA in head


def default_cases_dir() -> Path:
    """The bundled cases (``conformance/cases`` of the source tree)."""
    return Path(__file__).resolve().parent / "cases"


def discover_cases(paths: Iterable[str | Path] | None = None, names: Iterable[str] | None = None) -> list[Case]:
    """Every case file under ``paths`` (files or directories, default the bundled cases), sorted by
    name; ``names`` keeps only cases whose name matches one of the given names or glob patterns."""
    import fnmatch

    roots = [Path(p) for p in (paths or [default_cases_dir()])]
    files: list[Path] = []
    for r in roots:
        if r.is_file():
            files.append(r)
        elif r.is_dir():
            files += [f for f in sorted(r.rglob("*.json")) if "models" not in f.relative_to(r).parts[:-1]
                      and is_case_file(f)]
        else:
            raise CaseError(f"--cases {r}: no such file or directory")
    cases = [load_case(f) for f in files]
    if names:
        pats = list(names)
        cases = [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in pats)]
    seen: dict[str, Path | None] = {}
    for c in cases:
        if c.name in seen:
            raise CaseError(f"two cases named {c.name!r}: {seen[c.name]} and {c.path}")
        seen[c.name] = c.path
    return sorted(cases, key=lambda c: c.name)


__all__ = ["model_digest", "MARGIN_RTOL", "MARGIN_ATOL", "STEP_STATE_RTOL", "STEP_STATE_ATOL", "SCHEMA", "MODES", "DEFAULT_TIE_MARGINS", "Case", "CaseError", "save_case", "load_case",
           "dumps_case", "discover_cases", "default_cases_dir", "is_case_file"]
