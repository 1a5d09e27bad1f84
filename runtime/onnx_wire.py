"""Protobuf's wire format, as far as prunec writes and reads ONNX files without holding them.

``varint`` encodes a base-128 varint (``runtime.export.save_embedded`` writes initializers
record by record with it). ``initializer_headers`` reads the element type and dims of every
initializer of an ONNX file field by field, seeking over everything else (weight bytes
included), so a report can count a file's parameters without loading it (``onnx.load``
reads the whole file and then parses it: two copies of every weight). It reads
``ModelProto.graph`` (field 7; protobuf merges repeated records of it, which is how
``save_embedded`` writes) and in it ``GraphProto.initializer`` (field 5), a ``TensorProto``
of which has ``dims`` (field 1, packed or not) and ``data_type`` (field 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

VARINT, FIXED64, DELIMITED, FIXED32 = 0, 1, 2, 5  # the wire types ONNX messages use
MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_DIMS, TENSOR_DATA_TYPE = 7, 5, 1, 2


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of ``n`` >= 0.

    >>> varint(1), varint(300)
    (b'\\x01', b'\\xac\\x02')
    """
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(f: BinaryIO) -> int:
    """The varint at ``f``'s position (ValueError at the end of the file)."""
    n = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated protobuf varint")
        n |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            return n


def fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, wire type, value) of a message's fields up to offset ``end``: a varint's
    value, or a length-delimited field's end offset (after each yield ``f`` is moved there,
    whatever the consumer read); fixed-width fields are skipped."""
    while f.tell() < end:
        key = read_varint(f)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            yield number, wire, read_varint(f)
        elif wire == DELIMITED:
            stop = read_varint(f) + f.tell()
            yield number, wire, stop
            f.seek(stop)
        elif wire in (FIXED64, FIXED32):
            f.seek(8 if wire == FIXED64 else 4, 1)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def initializer_headers(path: Path) -> Iterator[tuple[int, tuple[int, ...]]]:
    """(data_type, dims) of every initializer of the ONNX file ``path``, in file order."""
    with path.open("rb") as f:
        for number, wire, end in fields(f, path.stat().st_size):
            if number != MODEL_GRAPH or wire != DELIMITED:
                continue
            for sub, sub_wire, sub_end in fields(f, end):
                if sub == GRAPH_INITIALIZER and sub_wire == DELIMITED:
                    yield _tensor_header(f, sub_end)


def _tensor_header(f: BinaryIO, end: int) -> tuple[int, tuple[int, ...]]:
    data_type, dims = 0, []
    for number, wire, value in fields(f, end):
        if number == TENSOR_DATA_TYPE and wire == VARINT:
            data_type = value
        elif number == TENSOR_DIMS and wire == VARINT:
            dims.append(value)
        elif number == TENSOR_DIMS:  # packed
            while f.tell() < value:
                dims.append(read_varint(f))
    return data_type, tuple(dims)
