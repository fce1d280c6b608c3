"""Whether a SavedModel folder holds what TF Serving needs to load it, read from its files
alone: no TensorFlow, no graph run, a few reads of the protobuf wire format.

TF Serving loads `saved_model.pb` (a SavedModel message with at least one MetaGraph; ours
must carry the tag `serve` and the signature `serving_default`), then restores the
variables from `variables/variables.index` (a LevelDB-style table: its header entry names
the number of data shards, every other entry where one tensor lies in which shard) and
the `variables.data-NNNNN-of-MMMMM` shards. A file truncated, garbled, replaced by other
protobuf bytes or deleted shows up here as one reason.
"""
from __future__ import annotations

import struct
from pathlib import Path

SERVE_TAG, SIGNATURE = "serve", "serving_default"
TABLE_MAGIC = 0xDB4775248B80FB57  # the last 8 bytes of a TensorFlow table file
FOOTER_BYTES = 48  # two block handles padded to 40 bytes, then the magic
BLOCK_TRAILER_BYTES = 5  # compression type and crc32c after every block


class Unreadable(ValueError):
    """Bytes that are not the message or table they should be."""


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(data) and shift < 64:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i
    raise Unreadable("a varint runs past the end")


def fields(message: bytes) -> list[tuple[int, int | bytes]]:
    """The top-level (field number, value) pairs of a protobuf message: an int for varints
    and fixed-width fields, bytes for length-delimited ones. Raises Unreadable when a field
    does not end inside the message."""
    found, i = [], 0
    while i < len(message):
        tag, i = _varint(message, i)
        number, kind = tag >> 3, tag & 7
        if number == 0:
            raise Unreadable("field number 0")
        if kind == 0:
            value, i = _varint(message, i)
        elif kind == 2:
            length, i = _varint(message, i)
            value, i = message[i : i + length], i + length
        elif kind in (1, 5):
            width = 8 if kind == 1 else 4
            value, i = int.from_bytes(message[i : i + width], "little"), i + width
        else:  # groups (3, 4) are not used by any message read here; 6 and 7 do not exist
            raise Unreadable(f"wire type {kind}")
        if i > len(message):
            raise Unreadable("a field runs past the end")
        found.append((number, value))
    return found


def _messages(message: bytes, number: int) -> list[bytes]:
    values = [v for n, v in fields(message) if n == number]
    if any(not isinstance(v, bytes) for v in values):
        raise Unreadable(f"field {number} is not a message")
    return values


def saved_model_problem(pb: bytes) -> str | None:
    """What keeps `saved_model.pb` from being served, or None. SavedModel: meta_graphs = 2;
    MetaGraphDef: meta_info_def = 1 (MetaInfoDef: tags = 4), signature_def = 5 (a map: entry
    key = 1)."""
    try:
        graphs = _messages(pb, 2)
        if not graphs:
            return "saved_model.pb holds no MetaGraph"
        for graph in graphs:
            tags = {t.decode(errors="replace") for info in _messages(graph, 1) for t in _messages(info, 4)}
            signatures = {k.decode(errors="replace") for entry in _messages(graph, 5) for k in _messages(entry, 1)}
            if SERVE_TAG in tags and SIGNATURE in signatures:
                return None
    except Unreadable:
        return "saved_model.pb is truncated or not a SavedModel"
    return f"saved_model.pb has no MetaGraph tagged {SERVE_TAG!r} with the signature {SIGNATURE!r}"


def _block(table: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of the block a BlockHandle (offset, size) points at."""
    offset, i = _varint(handle, 0)
    size, _ = _varint(handle, i)
    if offset + size + BLOCK_TRAILER_BYTES > len(table) - FOOTER_BYTES:
        raise Unreadable("a block runs past the end")
    if table[offset + size] != 0:
        raise Unreadable("a compressed block")  # TensorFlow writes bundles uncompressed
    block = table[offset : offset + size]
    if len(block) < 4:
        raise Unreadable("a block without its restart count")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 * (restarts + 1)
    if end < 0:
        raise Unreadable("a block's restart array runs past its start")
    entries, key, i = [], b"", 0
    while i < end:
        shared, i = _varint(block, i)
        unshared, i = _varint(block, i)
        length, i = _varint(block, i)
        if shared > len(key) or i + unshared + length > end:
            raise Unreadable("an entry runs past its block")
        key = key[:shared] + block[i : i + unshared]
        entries.append((key, block[i + unshared : i + unshared + length]))
        i += unshared + length
    return entries


def bundle_shards(index: bytes) -> dict[int, int]:
    """From a tensor bundle's `variables.index`: for each data shard, the bytes its tensors
    need (the largest offset + size of a tensor in it). Header (key ""): num_shards = 1;
    each tensor's BundleEntryProto: shard_id = 3, offset = 4, size = 5."""
    if len(index) < FOOTER_BYTES or struct.unpack_from("<Q", index, len(index) - 8)[0] != TABLE_MAGIC:
        raise Unreadable("no table footer")
    footer = index[-FOOTER_BYTES:]
    _, i = _varint(footer, 0)  # the metaindex handle: offset, then size
    _, i = _varint(footer, i)
    need: dict[int, int] = {}
    header_seen = False
    for _, handle in _block(index, footer[i:]):
        for key, value in _block(index, handle):
            values = dict(fields(value))
            if key == b"":
                header_seen = True
                need.update({shard: need.get(shard, 0) for shard in range(values.get(1, 1))})
                continue
            shard = values.get(3, 0)
            need[shard] = max(need.get(shard, 0), values.get(4, 0) + values.get(5, 0))
    if not header_seen:
        raise Unreadable("no bundle header")
    return need


def variables_problem(variables: Path) -> str | None:
    """What keeps the variables from being restored, or None."""
    index = variables / "variables.index"
    if not index.is_file():
        return "variables/variables.index is missing"
    try:
        need = bundle_shards(index.read_bytes())
    except Unreadable as err:
        return f"variables/variables.index is truncated or not a tensor bundle ({err})"
    count = len(need)
    for shard, size in sorted(need.items()):
        if shard >= count:
            return f"variables/variables.index names shard {shard} of {count}"
        data = variables / f"variables.data-{shard:05d}-of-{count:05d}"
        if not data.is_file():
            return f"variables/{data.name} is missing"
        if data.stat().st_size < size:
            return f"variables/{data.name} has {data.stat().st_size} bytes, its tensors need {size}"
    return None


def problem(saved_model: Path) -> str | None:
    """Why TF Serving could not load the SavedModel in this folder, or None when it could."""
    saved_model = Path(saved_model)
    pb = saved_model / "saved_model.pb"
    if not pb.is_file():
        return "no saved_model.pb"
    return saved_model_problem(pb.read_bytes()) or variables_problem(saved_model / "variables")
