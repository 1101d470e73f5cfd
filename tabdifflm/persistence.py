"""One-file model storage: safetensors weights plus JSON metadata in its header. No pickle, so loading a
file can never run code; written to a temporary file and renamed, so a failed save never harms an old file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

MAGIC = "tabdifflm"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be used: missing, truncated, foreign, or from an incompatible version."""


class MissingModelFile(ModelFileError, FileNotFoundError):
    pass


REQUIRED_META = ("params", "schema", "decoder_ref", "encoder_ref", "seed", "history")
REQUIRED_TENSORS = ("latent_mean",)


def write_model_file(path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors and JSON-able metadata to ``path`` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    header = {"format": MAGIC, "format_version": str(FORMAT_VERSION)}
    header.update({k: json.dumps(v) for k, v in meta.items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        mask = os.umask(0)  # mkstemp makes the file 0600; give it the mode any new file would get
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_model_file(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`write_model_file`; ModelFileError says what is wrong with a bad one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise MissingModelFile(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != MAGIC:
                raise ModelFileError(f"{path} is not a tabdifflm model file")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{path} is not a readable tabdifflm model file (truncated or foreign): {e}") from e
    try:
        version = int(header.get("format_version", -1))
    except ValueError:
        raise ModelFileError(f"{path}: format_version {header.get('format_version')!r} is not a number") from None
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path} has model format version {version}; this tabdifflm reads version "
                             f"{FORMAT_VERSION}")
    meta = {}
    for k, v in header.items():
        if k in ("format", "format_version"):
            continue
        try:
            meta[k] = json.loads(v)
        except ValueError as e:
            raise ModelFileError(f"{path}: header entry {k!r} is not valid JSON ({e})") from None
    for k in REQUIRED_META:
        if k not in meta:
            raise ModelFileError(f"{path}: header entry {k!r} is missing")
    for k in REQUIRED_TENSORS:
        if k not in tensors:
            raise ModelFileError(f"{path}: tensor {k!r} is missing")
    return tensors, meta
