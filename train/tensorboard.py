"""TensorBoard event files beside ``metrics.jsonl``, written without TensorFlow, tensorboardX or torch.

An event file is a TFRecord file (each record: little-endian uint64 length, its masked CRC-32C, the bytes, their
masked CRC-32C) of ``tensorflow.Event`` protocol buffers; the few fields written here (``wall_time``, ``step``,
``file_version``, ``summary`` of ``simple_value`` scalars, ``session_log``) are encoded by hand below, so the
writer has no dependency. (tensorboardX would do the same, but importing it imports torch when torch is
installed: about 2 s per run.) View with ``pip install tensorboard; tensorboard --logdir checkpoints``.

:class:`TensorBoard` is the CLI's writer: a :class:`~cnnjax.training.loop.Hook` whose
:meth:`~TensorBoard.on_metrics` logs every step's train-step metrics as ``batch/<key>`` (``loss``, ``top1``,
``top5`` and whatever else the train step returns, e.g. ``lr`` and ``grad_norm``), and an ``on_record``
callback of :class:`~cnnjax.training.hooks.Evaluate` that logs each numeric field of a ``metrics.jsonl`` row at
the row's step (``val_top1`` as ``val/top1``, ``train_loss`` as ``train/loss``: a ``train_``/``val_`` prefix
becomes a ``/``; other fields, e.g. ``epoch`` or ``images_per_sec``, under their own name).
"""

from __future__ import annotations

import math
import os
import pathlib
import socket
import struct
import time
from collections.abc import Mapping

import numpy as np

from cnnjax.training.loop import Hook, Loop
from train.report import writing

#: The ``file_version`` of the first event of every file, as TensorFlow writes it.
FILE_VERSION = "brain.Event:2"
#: Per-step keys of the train-step metrics that are not scalars to plot.
SKIP_STEP_KEYS = frozenset({"finite"})
#: ``metrics.jsonl`` fields that are not logged (the step is the x axis).
SKIP_RECORD_KEYS = frozenset({"step"})


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord uses it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC: the CRC-32C rotated right by 15 bits plus ``0xa282ead8`` (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(step: int, wall_time: float, *, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None, session_start: bool = False) -> bytes:
    """One serialized ``tensorflow.Event``: ``wall_time`` (field 1, double), ``step`` (2, int64) and one of
    ``file_version`` (3), a ``Summary`` (5) of ``Value``s with ``tag`` (1) and ``simple_value`` (2, float32),
    or a ``SessionLog`` (7) with status START (1), which tells TensorBoard to drop the events at or after
    ``step`` from earlier files (a resumed run's recomputed steps)."""
    if step < 0:
        raise ValueError(f"an event step must be >= 0, got {step}")
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                          for tag, value in scalars.items())
        out += _field(5, values)
    if session_start:
        out += _field(7, b"\x08\x01")
    return out


class EventWriter:
    """Append events to a new file ``logdir/events.out.tfevents.<time>.<host>.<pid>`` (TensorBoard reads every
    such file under ``--logdir``), created with the first scalars (a run that logs nothing leaves no file). The
    first event is the file version; with ``purge_step`` the second is a session START at that step. Every
    write is flushed to the operating system (a kill loses nothing written); an ``OSError`` becomes a
    :class:`~cnnjax.checkpoint.StorageError`."""

    def __init__(self, logdir: str | os.PathLike, purge_step: int | None = None):
        self.path = pathlib.Path(logdir) / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}." \
                                           f"{os.getpid()}"
        self.purge_step = purge_step
        self._file = None

    def _write(self, event: bytes) -> None:
        with writing(self.path):
            if self._file is None:
                new = not self.path.exists()
                self._file = self.path.open("ab")
                if new:
                    self._file.write(tfrecord(encode_event(0, time.time(), file_version=FILE_VERSION)))
                    if self.purge_step is not None:
                        self._file.write(tfrecord(encode_event(self.purge_step, time.time(), session_start=True)))
            self._file.write(tfrecord(event))
            self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One event at ``step`` with a scalar per tag (float32, as TensorBoard stores them)."""
        if values:
            self._write(encode_event(step, time.time(), scalars=values))

    def close(self) -> None:
        """Close the file (if one was written); later scalars are appended to it."""
        if self._file is not None:
            with writing(self.path):
                self._file.close()
            self._file = None


def numeric(values: Mapping[str, object]) -> dict[str, float]:
    """The real-number items of ``values`` as floats (bools, strings, lists and arrays with more than one value
    are left out; NaN and inf are kept: TensorBoard shows them)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number | np.ndarray):
            continue
        if isinstance(value, np.ndarray) and (value.size != 1 or value.dtype.kind not in "iuf"):
            continue
        out[key] = float(value)
    return out


def record_tag(key: str) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` field: ``val_top1`` -> ``val/top1``, ``train_loss`` ->
    ``train/loss``, anything else unchanged."""
    for prefix in ("train_", "val_"):
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix[:-1] + "/" + key[len(prefix):]
    return key


class TensorBoard(Hook):
    """The CLI's TensorBoard writer (see the module docstring): per step ``batch/<key>`` from
    :meth:`on_metrics`, per evaluation (``__call__(record)``, an ``on_record`` callback) every numeric field of
    the row. ``start_step`` is the step the run starts from (0, or a resumed checkpoint's): the file starts with
    a session START at ``start_step + 1``, so TensorBoard drops what a killed run logged after that checkpoint
    (``metrics.jsonl`` drops those rows too)."""

    def __init__(self, logdir: str | os.PathLike, start_step: int = 0):
        if start_step < 0 or not math.isfinite(start_step):
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.writer = EventWriter(logdir, purge_step=int(start_step) + 1)

    @property
    def path(self) -> pathlib.Path:
        """The event file of this run (this process)."""
        return self.writer.path

    def is_due(self, loop: Loop) -> bool:
        return False  # it works through on_metrics and as an on_record callback

    def on_metrics(self, loop: Loop, step: int, metrics: dict) -> None:
        self.writer.scalars(step, {f"batch/{k}": v for k, v in numeric(metrics).items() if k not in SKIP_STEP_KEYS})

    def __call__(self, record: dict) -> None:
        self.writer.scalars(int(record["step"]), {record_tag(k): v for k, v in numeric(record).items()
                                                  if k not in SKIP_RECORD_KEYS})

    def end(self, loop: Loop) -> None:
        self.close()

    def close(self) -> None:
        self.writer.close()
