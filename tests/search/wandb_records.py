"""Read an offline W&B run file (`run-*.wandb`) back into plain Python, for tests.

wandb >= 0.2x writes these from its Go core; the Python reader is gone. The format is W&B's
7-byte header (":W&B", magic 0xBEE1, version 0) followed by a LevelDB-style log: 32 KiB blocks of
records, each with a 7-byte header (crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST)
holding chunks of serialized `wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<4sHB")
_BLOCK = 32 * 1024
_RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: Path):
    data = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(data, 0)
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, (ident, magic, version)
    offset, pending = _HEADER.size, b""
    while offset + _RECORD_HEADER <= len(data):
        left_in_block = _BLOCK - offset % _BLOCK
        if left_in_block < _RECORD_HEADER:  # block trailer: zero padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0 and length == 0:  # zero-filled tail of a block
            offset += left_in_block
            continue
        chunk = data[offset + _RECORD_HEADER : offset + _RECORD_HEADER + length]
        offset += _RECORD_HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    project: str = ""
    entity: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    artifacts: list[str] = field(default_factory=list)
    raw: bytes = b""


def _value(value_json: str) -> Any:
    return json.loads(value_json) if value_json else None


def read_run(path: Path) -> OfflineRun:
    """Config, history, summary and exit code of one offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun(raw=Path(path).read_bytes())
    for payload in iter_payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name = record.run.run_id, record.run.display_name
            run.project, run.entity = record.run.project, record.run.entity
            run.group, run.job_type, run.tags = record.run.run_group, record.run.job_type, list(record.run.tags)
            for item in record.run.config.update:
                run.config[item.key] = _value(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[item.key] = _value(item.value_json)
        elif kind == "history":
            run.history.append({item.key or ".".join(item.nested_key): _value(item.value_json)
                                for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or ".".join(item.nested_key)] = _value(item.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "artifact":
            run.artifacts.append(record.artifact.name)
    run.config.pop("_wandb", None)
    return run


def read_runs(root: Path) -> list[OfflineRun]:
    return [read_run(p) for p in sorted(Path(root).rglob("offline-run-*/run-*.wandb"))]
