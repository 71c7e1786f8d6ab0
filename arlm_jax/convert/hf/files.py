"""A Hugging Face model folder's files: ``config.json`` and the safetensors weights, read and
written with the ``safetensors`` package (no torch).

A folder holds ``config.json`` and either ``model.safetensors`` or shards named in
``model.safetensors.index.json`` (``{"metadata": {"total_size": bytes}, "weight_map": {tensor
name: shard file}}``), as ``transformers``' ``save_pretrained`` writes them. ``Tensors`` reads
one tensor at a time (a shard is memory-mapped, not loaded whole) and checks each one's shape
against what the config implies; ``write_tensors`` writes the shards and the index.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from arlm_jax.errors import ConfigError
from arlm_jax.files import atomic_write, atomic_write_text

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_config(folder: str | Path) -> dict:
    """The folder's ``config.json`` as a dict; a one-line ConfigError when it is missing or bad."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"hf: {str(folder)!r} is not a folder; give a Hugging Face model folder "
                          f"(config.json plus model.safetensors)")
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"hf: {str(folder)!r} has no config.json; give a Hugging Face model folder "
                          f"(config.json plus model.safetensors)") from None
    except ValueError as err:
        raise ConfigError(f"hf: {str(path)!r} is not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"hf: {str(path)!r} holds no JSON object of config fields")
    return data


class Tensors:
    """The tensors of a folder's safetensors file(s), by name, read on demand as float32."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open  # a small Rust package; no torch

        self.folder = Path(folder)
        self._open = safe_open
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                self.where = {str(k): self.folder / str(v) for k, v in weight_map.items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ConfigError(f"hf: {str(index)!r} is not a safetensors index (a JSON object with a "
                                  f"weight_map of tensor name -> file)") from None
        elif (self.folder / SINGLE).is_file():
            self.where = {name: self.folder / SINGLE for name in self._names(self.folder / SINGLE)}
        else:
            found = sorted(p.name for p in self.folder.iterdir() if p.suffix in (".bin", ".pt", ".h5", ".msgpack"))
            hint = f" (it has {', '.join(found)}: save it as safetensors first)" if found else ""
            raise ConfigError(f"hf: {str(self.folder)!r} has neither {SINGLE} nor {INDEX}{hint}")
        for path in sorted(set(self.where.values())):
            if not path.is_file():
                raise ConfigError(f"hf: {str(path)!r}, named in {INDEX}, does not exist")
        self._handles: dict[tuple[Path, str], object] = {}
        self.used: set[str] = set()

    def _names(self, path: Path) -> list[str]:
        try:
            with self._open(str(path), framework="np") as f:
                return list(f.keys())
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise ConfigError(f"hf: {str(path)!r} is not a readable safetensors file ({err})") from None

    def _handle(self, path: Path, framework: str):
        """The open (memory-mapped) file ``path``, read as ``framework``'s arrays; opened once."""
        if (path, framework) not in self._handles:
            self._handles[path, framework] = self._open(str(path), framework=framework)
        return self._handles[path, framework]

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor ``name`` as float32, which must have ``shape``; a one-line ConfigError if it is
        missing or shaped otherwise."""
        if name not in self.where:
            raise ConfigError(f"hf: tensor {name!r} is missing from {str(self.folder)!r} (its config.json "
                              f"implies it)")
        path = self.where[name]
        try:
            info = self._handle(path, "np").get_slice(name)
            got = tuple(info.get_shape())
            if got != tuple(shape):
                raise ConfigError(f"hf: tensor {name!r} in {str(path)!r} has shape {got}; its config.json "
                                  f"implies {tuple(shape)}")
            framework = "flax" if info.get_dtype() == "BF16" else "np"  # numpy has no bfloat16; jax has
            array = np.asarray(self._handle(path, framework).get_tensor(name), np.float32)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(f"hf: tensor {name!r} in {str(path)!r} cannot be read ({err})") from None
        self.used.add(name)
        return array

    def unused(self, ignorable: tuple[str, ...] = ()) -> list[str]:
        """Names not read by ``get``, except those ending in one of ``ignorable`` (buffers such as
        GPT-2's causal mask): tensors the config does not account for."""
        return sorted(n for n in self.where if n not in self.used and not n.endswith(ignorable))


def write_tensors(folder: Path, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> list[str]:
    """Write ``tensors`` (name -> array) as one ``model.safetensors``, or, when they exceed
    ``max_shard_bytes``, as ``model-0000i-of-0000n.safetensors`` shards plus the index, each
    file atomically. -> the files written."""
    from safetensors.numpy import save

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = np.ascontiguousarray(array)
        size += array.nbytes
    meta = {"format": "pt"}  # what transformers expects of a safetensors file it loads
    if len(shards) == 1:
        atomic_write(folder / SINGLE, lambda fh: fh.write(save(shards[0], metadata=meta)))
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        atomic_write(folder / name, lambda fh, shard=shard: fh.write(save(shard, metadata=meta)))
    index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
             "weight_map": {t: name for name, shard in zip(names, shards) for t in shard}}
    atomic_write_text(folder / INDEX, json.dumps(index, indent=2) + "\n")
    return [*names, INDEX]
