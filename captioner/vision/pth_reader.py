"""Read a PyTorch `.pth` state dict into numpy arrays without importing torch or running pickled code.

Both serializations are handled: the legacy one (pickles followed by raw little-endian storage
buffers) and the zip one (`archive/data.pkl` + `archive/data/<key>`). The pickle is read by an
Unpickler that resolves only the names a state dict needs (OrderedDict, tensor rebuild, storage
types) to local numpy stand-ins; any other name is refused, so a malicious file cannot run code.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from captioner.core.errors import CaptionerError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass
class _Storage:
    """A storage named in the pickle; its buffer is attached once the raw data has been read."""

    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclass
class _Tensor:
    """A tensor view (offset, size, stride in elements) of a storage, materialized after loading."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def in_bounds(self) -> bool:
        """True if every element of the view lies inside the storage (checked before any strided read)."""
        if self.storage.data is None or len(self.size) != len(self.stride):
            return False
        if self.offset < 0 or min(self.size + self.stride, default=0) < 0:
            return False
        if 0 in self.size:
            return True
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        return last < self.storage.data.size

    def to_numpy(self) -> np.ndarray:
        """Copy the view out of its storage buffer as a C-contiguous array."""
        assert self.storage.data is not None
        flat = self.storage.data[self.offset :]
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat, shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> _Tensor:
    """Stand-in for torch._utils._rebuild_tensor(_v2): record the view, ignore grad flags and hooks."""
    ints = (offset, *size, *stride)
    if not isinstance(storage, _Storage) or not all(isinstance(v, int) for v in ints):
        raise ValueError("malformed tensor record")
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: _Tensor, *_: Any) -> _Tensor:
    """Stand-in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    return data


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that knows only state-dict names and turns storage references into `_Storage`s."""

    def __init__(self, file: IO[bytes], source: str, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.source = source
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed name to its local stand-in; refuse everything else."""
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise CaptionerError(
            f"{self.source}: refusing to load '{module}.{name}' (only tensor state dicts are read)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        """Map a ('storage', type, key, location, numel[, view]) reference to a shared `_Storage`."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CaptionerError(f"{self.source}: unexpected persistent reference {pid!r:.60}")
        dtype, key, numel = pid[1], str(pid[2]), int(pid[4])
        if len(pid) > 5 and pid[5] is not None:
            raise CaptionerError(f"{self.source}: storage views are not supported")
        if dtype not in STORAGE_DTYPES.values():
            raise CaptionerError(f"{self.source}: unexpected storage type {dtype!r:.60}")
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, numel)
        return self.storages[key]


def _unpickle(file: IO[bytes], source: str, storages: dict[str, _Storage]) -> Any:
    """Unpickle one object with the restricted Unpickler, turning malformed data into CaptionerError."""
    try:
        return _StateDictUnpickler(file, source, storages).load()
    except CaptionerError:
        raise
    except Exception as exc:
        raise CaptionerError(f"{source}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from exc


def _read_legacy(file: IO[bytes], source: str) -> Any:
    """Read the pre-zip format: magic, version, sys info, the object, storage keys, then raw buffers."""
    storages: dict[str, _Storage] = {}
    if _unpickle(file, source, storages) != LEGACY_MAGIC:
        raise CaptionerError(f"{source}: not a PyTorch file (bad magic number)")
    _unpickle(file, source, storages)
    sys_info = _unpickle(file, source, storages)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CaptionerError(f"{source}: big-endian PyTorch files are not supported")
    obj = _unpickle(file, source, storages)
    keys = _unpickle(file, source, storages)
    if not isinstance(keys, list):
        raise CaptionerError(f"{source}: malformed storage key list")
    for key in keys:
        storage = storages.get(str(key))
        header = file.read(8)
        if storage is None or len(header) != 8:
            raise CaptionerError(f"{source}: truncated or inconsistent storage data (key {key})")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * np.dtype(storage.dtype).itemsize
        buffer = file.read(nbytes)
        if numel != storage.numel or len(buffer) != nbytes:
            raise CaptionerError(f"{source}: truncated or inconsistent storage data (key {key})")
        storage.data = np.frombuffer(buffer, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    return obj


def _read_zip(path: Path, source: str) -> Any:
    """Read the zip format: `<root>/data.pkl` plus one `<root>/data/<key>` member per storage."""
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CaptionerError(f"{source}: zip file without exactly one data.pkl")
        root = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as file:
            obj = _unpickle(file, source, storages)
        for key, storage in storages.items():
            try:
                buffer = archive.read(f"{root}data/{key}")
            except KeyError as exc:
                raise CaptionerError(f"{source}: storage {key} missing from the archive") from exc
            dtype = np.dtype(storage.dtype).newbyteorder("<")
            if len(buffer) != storage.numel * dtype.itemsize:
                raise CaptionerError(f"{source}: storage {key} has the wrong size")
            storage.data = np.frombuffer(buffer, dtype=dtype)
    return obj


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Return a `.pth` state dict as {name: numpy array}; a non-state-dict or unsafe file is a CaptionerError."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CaptionerError(f"{source}: weights file not found")
    if zipfile.is_zipfile(path):
        obj = _read_zip(path, source)
    else:
        with path.open("rb") as file:
            obj = _read_legacy(file, source)
    if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in obj.values()):
        raise CaptionerError(f"{source}: expected a state dict of tensors")
    bad = [name for name, tensor in obj.items() if not tensor.in_bounds()]
    if bad:
        raise CaptionerError(f"{source}: tensor {bad[0]} lies outside its storage")
    return {str(name): tensor.to_numpy() for name, tensor in obj.items()}
