"""TensorBoard scalar event files without TensorFlow (tensorboardX's protos and record framing).

    w = TBWriter("<workdir>/tensorboard/supernet")
    w.scalars(step, {"train/loss": 0.7, "train/lr": 1e-3}, wall_time=t)
    rewind(logdir, step)      # a resumed run: forget every event after `step`

An event file is a TFRecord file (per record: uint64 length, masked crc32c of the length, the
serialized `Event` proto, masked crc32c of the data) whose first event carries
file_version "brain.Event:2"; each scalar row is one Event(step, wall_time, summary) with one
Summary.Value(tag, simple_value) per metric.

Every write is synchronous and flushed (no background thread, so a crash loses nothing that
metrics.jsonl has and nothing needs closing at exit). A write error never stops a run: it is
logged once as a warning and that writer stops writing.

Resume: `rewind` rewrites the run's existing event files without the events after the restored
step (temp file + os.replace) and the next writer starts a new event file that opens with a
SessionLog START event at step + 1. So any reader sees each step once; TensorBoard's own reader
would also drop those steps on the START event alone (its purge of orphaned data), and in general
keeps the latest value written for a step.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time

log = logging.getLogger(__name__)

FILE_PREFIX = "events.out.tfevents."


def _protos():
  # Imported lazily: `tensorboard = False` runs never import tensorboardX.
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  from tensorboardX.proto.summary_pb2 import Summary
  return Event, SessionLog, Summary


def _masked_crc(data: bytes) -> int:
  from tensorboardX.record_writer import masked_crc32c
  return masked_crc32c(data)


def _record(data: bytes) -> bytes:
  """One TFRecord: little-endian length, masked crc32c of it, data, masked crc32c of data."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data +
          struct.pack("<I", _masked_crc(data)))


def read_records(path: str) -> list[bytes]:
  """The records of a TFRecord file, checking both crcs. A torn last record (a crash while it
  was written) ends the list; a wrong crc elsewhere raises ValueError naming the file."""
  out = []
  with open(path, "rb") as f:
    blob = f.read()
  pos = 0
  while pos < len(blob):
    if pos + 12 > len(blob):
      break
    header = blob[pos:pos + 8]
    (n,), (crc,) = struct.unpack("<Q", header), struct.unpack("<I", blob[pos + 8:pos + 12])
    end = pos + 12 + n + 4
    if end > len(blob):
      break
    data = blob[pos + 12:pos + 12 + n]
    (dcrc,) = struct.unpack("<I", blob[pos + 12 + n:end])
    if crc != _masked_crc(header) or dcrc != _masked_crc(data):
      raise ValueError(f"{path}: bad crc in the record at byte {pos}")
    out.append(data)
    pos = end
  return out


def read_events(path: str) -> list:
  """The `Event` protos of one event file, in file order."""
  Event, _, _ = _protos()
  return [Event.FromString(r) for r in read_records(path)]


def event_files(logdir: str) -> list[str]:
  """The event files of `logdir`, in the order TensorBoard reads them (by name)."""
  if not os.path.isdir(logdir):
    return []
  return sorted(os.path.join(logdir, f) for f in os.listdir(logdir) if f.startswith(FILE_PREFIX)
                and not f.endswith(".tmp"))


def rewind(logdir: str, step: int) -> int:
  """Removes every event with step > `step` from the event files of `logdir` (each file is
  rewritten atomically). Returns the number of events removed."""
  removed = 0
  for path in event_files(logdir):
    events = read_events(path)
    keep = [e for e in events if e.step <= step or e.HasField("file_version")]
    if len(keep) == len(events):
      continue
    removed += len(events) - len(keep)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(b"".join(_record(e.SerializeToString()) for e in keep))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return removed


class TBWriter:
  """Scalar rows into a new event file of `logdir`, created on the first write.

  purge_step: when set (a resumed run), the file opens with SessionLog START at that step.
  Never raises from `scalars`/`close`: the first error is logged as a warning, then the writer
  is disabled (`self.failed` holds the message).
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    self.logdir, self.purge_step = logdir, purge_step
    self.path: str | None = None
    self.failed: str | None = None
    self._f = None

  def _open(self) -> None:
    Event, SessionLog, _ = _protos()
    os.makedirs(self.logdir, exist_ok=True)
    # Time first (10 digits), then host, then ns + pid: names sort in creation order, and two
    # writers opened in the same second (a quick resume) never share a file.
    name = (f"{FILE_PREFIX}{int(time.time()):010d}.{socket.gethostname()}."
            f"{time.time_ns():020d}.{os.getpid()}")
    self.path = os.path.join(self.logdir, name)
    self._f = open(self.path, "ab")
    first = [Event(wall_time=time.time(), file_version="brain.Event:2")]
    if self.purge_step is not None:
      first.append(Event(wall_time=time.time(), step=int(self.purge_step),
                         session_log=SessionLog(status=SessionLog.START)))
    self._write(first)

  def _write(self, events) -> None:
    self._f.write(b"".join(_record(e.SerializeToString()) for e in events))
    self._f.flush()
    os.fsync(self._f.fileno())

  def scalars(self, step: int, values: dict, wall_time: float | None = None) -> None:
    """One event at `step` holding every finite-or-not float of `values` (tag -> number)."""
    if self.failed is not None or not values:
      return
    try:
      Event, _, Summary = _protos()
      if self._f is None:
        self._open()
      summ = Summary(value=[Summary.Value(tag=t, simple_value=float(v))
                            for t, v in values.items()])
      self._write([Event(wall_time=time.time() if wall_time is None else float(wall_time),
                         step=int(step), summary=summ)])
    except Exception as e:   # noqa: BLE001  (a logging side channel must not stop training)
      self._fail(e)

  def close(self) -> None:
    if self._f is not None:
      try:
        self._f.close()
      except Exception as e:   # noqa: BLE001
        self._fail(e)
      self._f = None

  def _fail(self, e: Exception) -> None:
    self.failed = f"{type(e).__name__}: {e}"
    log.warning("TensorBoard events in %s are no longer written (%s); metrics.jsonl is "
                "unaffected.", self.logdir, self.failed)
    print(f"[evonas_jax] WARNING: TensorBoard writer failed ({self.failed}); continuing "
          "without TensorBoard events for this run.", flush=True)
    try:
      if self._f is not None:
        self._f.close()
    except Exception:   # noqa: BLE001
      pass
    self._f = None
