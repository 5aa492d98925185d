"""Safetensors files of a checkpoint directory: discovery, header reading, loading, writing.

Headers are parsed here (the format is an 8-byte little-endian length, a JSON header, then the data)
so that truncated or damaged files are refused with the file name and the byte counts before any
tensor is read, and so that `describe` can list tensors without loading them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype codes -> (bytes per element, kind)
DTYPES: dict[str, tuple[float, str]] = {
    "F64": (8, "float"), "F32": (4, "float"), "F16": (2, "float"), "BF16": (2, "float"),
    "F8_E4M3": (1, "float8"), "F8_E5M2": (1, "float8"),
    "I64": (8, "int"), "I32": (4, "int"), "I16": (2, "int"), "I8": (1, "int"),
    "U64": (8, "uint"), "U32": (4, "uint"), "U16": (2, "uint"), "U8": (1, "uint"), "BOOL": (1, "bool"),
}
TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
    "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorRecord:
    """A tensor as stored: its name in the file, the file, the safetensors dtype code and shape."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def kind(self) -> str:
        return DTYPES.get(self.dtype, (0, "unknown"))[1]

    @property
    def torch_dtype(self) -> str:
        return TORCH_NAMES.get(self.dtype, self.dtype)


def read_header(file: Path) -> dict[str, TensorRecord]:
    """Parse one safetensors header and check that the file holds all the bytes it announces."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes); expected an 8-byte "
                                      "header length followed by a JSON header and the tensor data")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{file}: truncated safetensors header: the file announces a {n}-byte "
                                      f"header but holds {size - 8} bytes after the length; expected a complete file")
            raw = fh.read(n)
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e.strerror or e}); expected a readable safetensors file") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable safetensors header ({e}); expected a JSON object "
                              "mapping tensor names to dtype/shape/data_offsets") from e
    records: dict[str, TensorRecord] = {}
    data_len = size - 8 - n
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{file}: tensor '{name}' has a malformed header entry {info!r}; expected "
                                  "{'dtype', 'shape', 'data_offsets'}") from e
        if dtype not in DTYPES:
            raise CheckpointError(f"{file}: tensor '{name}' has unknown dtype {dtype!r}; expected one of "
                                  f"{sorted(DTYPES)}")
        nbytes = int(math.prod(shape) * DTYPES[dtype][0])
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{file}: tensor '{name}' spans bytes [{begin}, {end}); expected {nbytes} bytes "
                                  f"for dtype {dtype} and shape {list(shape)}")
        end_max = max(end_max, end)
        records[name] = TensorRecord(name, file, dtype, shape)
    if end_max > data_len:
        raise CheckpointError(f"{file}: truncated safetensors file: the header announces {end_max} bytes of tensor "
                              f"data but the file holds {data_len}; expected the complete file")
    return records


def weight_files(ckpt_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a checkpoint directory and, when sharded, the index's weight map."""
    index = ckpt_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e}); expected a JSON object with a 'weight_map' "
                                  "from tensor names to shard files") from e
        files = []
        for shard in dict.fromkeys(weight_map.values()):
            p = ckpt_dir / shard
            if not p.is_file():
                raise CheckpointError(f"{index}: shard '{shard}' listed in 'weight_map' is missing; expected "
                                      f"the file {p}")
            files.append(p)
        return files, weight_map
    single = ckpt_dir / SINGLE_NAME
    if single.is_file():
        return [single], None
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if files:
        return files, None
    has_bin = (ckpt_dir / "pytorch_model.bin").exists()
    extra = " (pytorch_model.bin found: convert it to safetensors first)" if has_bin else ""
    raise CheckpointError(f"{ckpt_dir}: no weights{extra}; expected '{SINGLE_NAME}' or '{INDEX_NAME}' with its shards")


def read_headers(ckpt_dir: Path) -> dict[str, TensorRecord]:
    """Every stored tensor of a checkpoint directory (one file or an indexed set of shards)."""
    files, weight_map = weight_files(ckpt_dir)
    out: dict[str, TensorRecord] = {}
    for f in files:
        for name, rec in read_header(f).items():
            if name in out:
                raise CheckpointError(f"{f}: tensor '{name}' is also stored in {out[name].file}; expected each "
                                      "tensor in exactly one file")
            out[name] = rec
    if weight_map is not None:
        for name, shard in weight_map.items():
            if name not in out:
                raise CheckpointError(f"{ckpt_dir / INDEX_NAME}: tensor '{name}' is mapped to '{shard}' but no "
                                      "shard holds it; expected it in that file")
            if out[name].file.name != Path(shard).name:
                raise CheckpointError(f"{ckpt_dir / INDEX_NAME}: tensor '{name}' is mapped to '{shard}' but stored "
                                      f"in '{out[name].file.name}'; expected the index to agree with the shards")
    return out


def load_tensors(records: list[TensorRecord]) -> dict[str, torch.Tensor]:
    """Load the given tensors (keyed by their stored names) to CPU."""
    from safetensors import safe_open

    by_file: dict[Path, list[TensorRecord]] = {}
    for r in records:
        by_file.setdefault(r.file, []).append(r)
    out: dict[str, torch.Tensor] = {}
    for file, recs in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device="cpu") as fh:
                for r in recs:
                    out[r.name] = fh.get_tensor(r.name)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{file}: cannot read tensors ({type(e).__name__}: {e}); expected a valid "
                                  "safetensors file") from e
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str]) -> None:
    """Write one safetensors file atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp = file.with_name(file.name + ".tmp")
    save_file(clean, str(tmp), metadata=metadata)
    os.replace(tmp, file)


def write_json(obj: dict, file: Path) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, file)


def clear_weights(ckpt_dir: Path) -> None:
    """Remove a previous checkpoint's weight files (the index and the shards it lists, model.safetensors)."""
    index = ckpt_dir / INDEX_NAME
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            shards = set()
        for s in shards:
            p = ckpt_dir / s
            if p.is_file() and p.suffix == ".safetensors" and p.parent == ckpt_dir:
                p.unlink()
        index.unlink()
    single = ckpt_dir / SINGLE_NAME
    if single.is_file():
        single.unlink()
