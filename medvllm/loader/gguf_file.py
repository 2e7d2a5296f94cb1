"""Read a GGUF file's metadata and tensor table from a memory map.

gguf.GGUFReader builds a numpy view per vocabulary string, which is slow on a vocabulary of tens of
thousands of tokens and merges; walking the same bytes with struct takes a small fraction of that time.
Tensor data is never copied here: each tensor is a uint8 view of the map, decoded later by gguf_weights.
"""

import mmap
import struct
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from medvllm.errors import ModelLoadError

# metadata value types: struct format per fixed-size type; 8 is a string, 9 an array
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (GGUF stores dimensions fastest-first, i.e. reversed)
    qtype: GGMLQuantizationType
    start: int  # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    """Metadata (`dict`), tensor table (`dict[name, TensorInfo]`) and raw tensor bytes of one file."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                self._map = b""
        if self._map[:4] != b"GGUF":
            raise ModelLoadError(
                f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                f"pass a .gguf file or a Hugging Face model folder"
            )
        try:
            self.metadata, self.tensors = self._parse()
        except (struct.error, UnicodeDecodeError, ValueError, IndexError) as e:
            raise ModelLoadError(
                f"{path} is a corrupt or truncated GGUF file ({e}); re-download or re-convert it"
            ) from None

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as uint8 rows: (*shape[:-1], bytes per row), the layout gguf.quants expects."""
        data = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.start)
        return data.reshape(*info.shape[:-1], -1)

    def release(self, info: TensorInfo) -> None:
        """Drop the tensor's pages from this process once the loader has copied it.

        A mapped page that was read stays in the process's RSS for as long as the map lives (the
        source keeps it for a later reload), which comes to the whole file on top of the weights made
        from it. The map is read-only, so a page dropped here is simply read from the file again if it
        is ever touched.
        """
        self._drop(info.start, info.start + info.nbytes)

    def release_rows(self, info: TensorInfo, row_bytes: int, start: int, stop: int) -> None:
        """release() for rows start..stop-1 of the tensor (as raw() lays them out), once they are decoded."""
        self._drop(info.start + start * row_bytes, info.start + stop * row_bytes)

    def release_metadata(self) -> None:
        """Drop the pages of the header (mostly the vocabulary) once it is parsed."""
        self._drop(0, self.data_start)

    def release_all(self) -> None:
        """Drop every page: a 2 MiB page the kernel mapped across two tensors survives their releases."""
        self._drop(0, len(self._map))

    def _drop(self, start: int, end: int) -> None:
        if isinstance(self._map, mmap.mmap) and hasattr(self._map, "madvise") and end > start:
            start = start // mmap.PAGESIZE * mmap.PAGESIZE
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _parse(self):
        m = self._map
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}, only versions 2 and 3 are supported")
        pos = 24
        metadata = {}
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (vtype,) = struct.unpack_from("<I", m, pos)
            metadata[key], pos = self._value(pos + 4, vtype)

        table = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", m, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", m, pos + 4)
            qtype, offset = struct.unpack_from("<IQ", m, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            table.append((name, tuple(reversed(dims)), GGMLQuantizationType(qtype), offset))

        align = int(metadata.get("general.alignment", 32))
        data_start = self.data_start = (pos + align - 1) // align * align
        tensors = {}
        for name, shape, qtype, offset in table:
            block, block_bytes = GGML_QUANT_SIZES[qtype]
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count // block * block_bytes
            start = data_start + offset
            if start + nbytes > len(m):
                raise ValueError(f"tensor {name!r} runs past the end of the file")
            tensors[name] = TensorInfo(name, shape, qtype, start, nbytes)
        return metadata, tensors

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._map, pos)
        end = pos + 8 + n
        if end > len(self._map):
            raise ValueError(f"string at byte {pos} runs past the end of the file")
        return self._map[pos + 8 : end].decode("utf-8"), end

    def _value(self, pos: int, vtype: int):
        if vtype in _SCALAR:
            fmt = "<" + _SCALAR[vtype]
            return struct.unpack_from(fmt, self._map, pos)[0], pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return self._string(pos)
        if vtype == _ARRAY:
            etype, n = struct.unpack_from("<IQ", self._map, pos)
            pos += 12
            if etype in _NUMPY:  # numbers: one bulk read (token scores and types are vocab-sized)
                dtype = np.dtype(_NUMPY[etype])
                values = np.frombuffer(self._map, dtype=dtype, count=n, offset=pos).tolist()
                return values, pos + n * dtype.itemsize
            values = []
            for _ in range(n):
                value, pos = self._value(pos, etype)
                values.append(value)
            return values, pos
        raise ValueError(f"unknown metadata value type {vtype} at byte {pos}")
