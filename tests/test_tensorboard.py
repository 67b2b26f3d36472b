"""TensorBoard event files: read back with protobuf's own decoder (messages declared from TensorFlow's
``event.proto``/``summary.proto`` field numbers) and a TFRecord reader with an independent bitwise CRC-32C;
the values equal what the loop fetched and what ``metrics.jsonl`` holds; extra train-step keys (``lr``,
``grad_norm``) reach the logger without changing the epoch sums; one CLI run read by TensorFlow's reader."""

from __future__ import annotations

import functools
import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.training import Loop, TrainState
from cnnjax.training import hooks as H
from train import report
from train import tensorboard as tb

protobuf = pytest.importorskip("google.protobuf")


@functools.lru_cache(maxsize=1)
def event_class():
    """``tensorflow.Event`` with the fields cnnjax writes, built from a descriptor (no generated code)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="cnnjax_test_event.proto", package="cnnjax_test", syntax="proto3")
    value = descriptor_pb2.DescriptorProto(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = f.message_type.add(name="Summary")
    summary.nested_type.add().CopyFrom(value)
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".cnnjax_test.Summary.Value")
    session = f.message_type.add(name="SessionLog")
    session.field.add(name="status", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".cnnjax_test.Summary")
    event.field.add(name="session_log", number=7, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".cnnjax_test.SessionLog")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("cnnjax_test.Event"))


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C bit by bit (no table), for checking the writer's table-driven one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = bitwise_crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path) -> list:
    """Every record of a TFRecord file, CRCs checked, parsed as Events."""
    data, pos, events = path.read_bytes(), 0, []
    Event = event_class()
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header)
        payload = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked(payload)
        events.append(Event.FromString(payload))
        pos += 16 + length
    assert pos == len(data)
    return events


def scalars(events) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the summary events."""
    out: dict[str, dict[int, float]] = {}
    for e in events:
        for v in e.summary.value:
            out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def test_crc32c_matches_the_standard_check_value_and_a_bitwise_reference():
    assert tb.crc32c(b"123456789") == 0xE3069283 == bitwise_crc32c(b"123456789")  # RFC 3720's check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 64, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tb.crc32c(data) == bitwise_crc32c(data)


def test_event_writer_round_trips_through_protobuf(tmp_path):
    writer = tb.EventWriter(tmp_path, purge_step=5)
    writer.scalars(9, {})  # nothing to write: no file yet
    assert not list(tmp_path.iterdir())
    writer.scalars(3, {"val/top1": 0.8125, "batch/loss": 2.5e-3, "huge": 1e30})
    writer.close()
    writer.scalars(2**40, {"batch/loss": float("nan")})  # appended after a close, no second header
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert path == writer.path
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2" and events[0].step == 0
    assert events[1].session_log.status == 1 and events[1].step == 5  # START: TensorBoard drops steps >= 5
    assert [e.step for e in events[2:]] == [3, 2**40]
    got = scalars(events)
    assert got["val/top1"] == {3: np.float32(0.8125)} and got["batch/loss"][3] == np.float32(2.5e-3)
    assert got["huge"][3] == np.float32(1e30) and np.isnan(got["batch/loss"][2**40])
    assert all(abs(e.wall_time - events[0].wall_time) < 60 for e in events)
    with pytest.raises(ValueError, match="step must be >= 0"):
        tb.encode_event(-1, 0.0)


def test_record_tags_and_numeric_fields():
    assert [tb.record_tag(k) for k in ("val_top1", "train_loss", "val_ema_top1", "images_per_sec", "epoch", "val_")] \
        == ["val/top1", "train/loss", "val/ema_top1", "images_per_sec", "epoch", "val_"]
    values = {"a": 1, "b": np.float32(2.5), "c": np.array(3.0), "d": True, "e": "x", "f": np.zeros(3),
              "g": np.array(True), "h": [1.0]}
    assert tb.numeric(values) == {"a": 1.0, "b": 2.5, "c": 3.0}


LRS = [0.1 * 0.9**i for i in range(12)]


def _toy_loop(tmp_path, hooks, steps=12, steps_per_epoch=6):
    """A Loop over a host-side "train step" whose metrics carry ``lr`` and ``grad_norm`` besides the usual."""

    def train_step(state, batch):
        i = int(state.step)
        metrics = {"loss": jnp.float32(2.0 / (i + 1)), "top1": jnp.float32(i / 20), "top5": jnp.float32(0.5),
                   "finite": jnp.bool_(True), "lr": jnp.float32(LRS[i]), "grad_norm": jnp.float32(1.0 + i)}
        return state.replace(step=state.step + 1), metrics

    state = TrainState(step=jnp.zeros((), jnp.int32), params={}, batch_stats={}, opt_state=(),
                       rng=jnp.zeros((2,), jnp.uint32))
    return Loop(state, train_step, lambda epoch, start: iter([{}] * (steps_per_epoch - start)), total_steps=steps,
                steps_per_epoch=steps_per_epoch, batch_size=4, to_global=lambda b: b, hooks=hooks)


def test_loop_metrics_and_records_reach_tensorboard_as_in_metrics_jsonl(tmp_path):
    writer = tb.TensorBoard(tmp_path)
    confusion = np.array([[3, 1], [0, 4]])
    evaluation = H.Evaluate(1, lambda s: {"val_loss": 0.5 + int(s.step), "val_top1": 0.875, "val_top5": 1.0,
                                          "val_count": 8, "val_ema_top1": 0.75, "val_confusion": confusion},
                            on_record=[report.MetricsFile(tmp_path), writer])
    loop = _toy_loop(tmp_path, [H.FetchMetrics(5), writer, evaluation])
    loop.run()
    # the extra keys did not disturb the epoch sums: the second epoch's means over steps 7..12
    assert evaluation.last["train_loss"] == pytest.approx(np.mean([np.float32(2.0 / (i + 1)) for i in range(6, 12)]))
    assert "val_confusion" not in evaluation.last
    np.testing.assert_array_equal(evaluation.arrays["val_confusion"], confusion)
    got = scalars(read_events(writer.path))
    assert got["batch/lr"] == {i + 1: np.float32(LRS[i]) for i in range(12)}
    assert got["batch/grad_norm"] == {i + 1: np.float32(1.0 + i) for i in range(12)}
    assert got["batch/loss"] == {i + 1: np.float32(2.0 / (i + 1)) for i in range(12)}
    assert "batch/finite" not in got
    rows = report.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [6, 12]
    for row in rows:
        for key, value in row.items():
            if key != "step":
                assert got[tb.record_tag(key)][row["step"]] == np.float32(value), key
    assert got["val/ema_top1"] == {6: np.float32(0.75), 12: np.float32(0.75)}


@pytest.mark.slow
def test_cli_event_file_holds_metrics_jsonl_and_every_step_loss(tmp_path):
    from tests.test_train import TINY, run_main

    workdir = tmp_path / "run"  # in-process: what is tested is the event file, not the process
    assert run_main([*TINY, "--max-steps", "30", "--ema-decay", "0.9", "--ema-every", "2", "--workdir",
                     str(workdir)]) == 0
    (path,) = workdir.glob("events.out.tfevents.*")
    got = scalars(read_events(path))
    rows = report.read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [22, 30]
    for row in rows:
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_sec", "epoch",
                    "val_top1_ema", "val_loss_ema"):
            assert got[tb.record_tag(key)][row["step"]] == np.float32(row[key]), key
        assert {tb.record_tag(k) for k, v in row.items() if k != "step"} <= set(got)
    for key in ("loss", "top1", "top5", "lr", "grad_norm"):  # every step's train-step metrics
        assert sorted(got[f"batch/{key}"]) == list(range(1, 31)), key
        assert all(np.isfinite(v) for v in got[f"batch/{key}"].values())
    assert min(got["batch/lr"].values()) >= 0 < max(got["batch/lr"].values())  # warmup may start at 0
    assert all(v > 0 for v in got["batch/grad_norm"].values())
    try:  # TensorFlow's own reader, where the `data` extra is installed
        from tensorflow.compat.v1.train import summary_iterator
    except ImportError:
        return
    tf_scalars: dict = {}
    for e in summary_iterator(str(path)):
        for v in e.summary.value:
            tf_scalars.setdefault(v.tag, {})[e.step] = v.simple_value
    assert tf_scalars == got
    assert json.loads((workdir / "per_class.json").read_text())["step"] == 30


def test_a_resumed_run_marks_a_restart_after_its_checkpoint(tmp_path):
    writer = tb.TensorBoard(tmp_path, start_step=12)  # resumed from the checkpoint of step 12
    writer({"epoch": 3, "step": 18, "val_top1": 0.5})
    writer.close()
    events = read_events(writer.path)
    assert (events[1].session_log.status, events[1].step) == (1, 13)  # TensorBoard drops older files' steps >= 13
    assert scalars(events) == {"epoch": {18: 3.0}, "val/top1": {18: 0.5}}
    with pytest.raises(ValueError, match="start_step"):
        tb.TensorBoard(tmp_path, start_step=-1)
