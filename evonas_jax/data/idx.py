"""Reader for the IDX format used by (Fashion-)MNIST.

IDX layout (all header integers big-endian):

    bytes 0-1  zero
    byte  2    element type code (0x08 = uint8, 0x09 = int8, 0x0B = int16,
               0x0C = int32, 0x0D = float32, 0x0E = float64)
    byte  3    number of dimensions ``ndim``
    then       ``ndim`` uint32 dimension sizes
    then       the data, row-major, big-endian elements.

Files may be gzip-compressed (``*.gz``); the gzip magic number is detected, so
the file name does not matter.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

# Element type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes) -> np.ndarray:
    """Parses IDX bytes (already decompressed) into an array.

    Returns:
      An array of shape given by the header (e.g. (N, 28, 28) for images,
      (N,) for labels) in native byte order.

    Raises:
      ValueError: when the header is malformed or the payload size does not
        match the dimensions (truncated or corrupt file).
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file: the first two bytes must be zero")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"unknown IDX element type code 0x{code:02X}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"truncated IDX header: need {header_len} bytes, have {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = dtype.itemsize
    for d in shape:   # Python ints: a corrupt header cannot overflow into a "matching" size
        expected *= d
    payload = len(data) - header_len
    if payload != expected:
        raise ValueError(
            f"IDX payload has {payload} bytes but the header shape {shape} with "
            f"dtype {dtype} needs {expected} bytes (truncated or corrupt file)"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order + a writable copy, so callers may modify the result.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or not. See `parse_idx` for shapes."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{os.fspath(path)}: not a readable gzip file (truncated or "
                             f"corrupt: {type(e).__name__}: {e})") from None
    try:
        return parse_idx(raw)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from None
