"""TensorBoard event files (evonas_jax.tb_writer, MetricWriter) read back by a parser written
here from the file format (TFRecord framing + masked crc32c + the Event/Summary protobuf wire
format), not by the writer's own code; and a real search writing them, hypervolume.png, the
pairwise pareto.png and provenance."""
import json
import os
import struct
import subprocess
from importlib import metadata

import jax
import numpy as np
import pytest

from evonas_jax import tb_writer
from evonas_jax.workdir import MetricWriter


# ------------------------------------------------------------------ independent reader
def _crc32c_table():
  poly, table = 0x82F63B78, []           # Castagnoli, reflected
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_T = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_reference_value():
  # The CRC-32C check value of "123456789" (RFC 3720 / iSCSI).
  assert crc32c(b"123456789") == 0xE3069283


def _varint(b, i):
  out = shift = 0
  while True:
    x = b[i]
    out |= (x & 0x7F) << shift
    i += 1
    if not x & 0x80:
      return out, i
    shift += 7


def _fields(b: bytes) -> list:
  """(field number, wire type, value) of a protobuf message."""
  out, i = [], 0
  while i < len(b):
    key, i = _varint(b, i)
    num, wt = key >> 3, key & 7
    if wt == 0:
      v, i = _varint(b, i)
    elif wt == 1:
      v, i = b[i:i + 8], i + 8
    elif wt == 2:
      n, i = _varint(b, i)
      v, i = b[i:i + n], i + n
    elif wt == 5:
      v, i = b[i:i + 4], i + 4
    else:
      raise AssertionError(f"wire type {wt}")
    out.append((num, wt, v))
  return out


def parse_event_file(path: str) -> list[dict]:
  """Every event: {"wall_time", "step", "file_version"?, "scalars"?: {tag: value},
  "session_start"?: bool}; asserts both crcs of every record."""
  blob = open(path, "rb").read()
  events, pos = [], 0
  while pos < len(blob):
    header = blob[pos:pos + 8]
    (n,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", blob[pos + 8:pos + 12])[0] == masked(crc32c(header))
    data = blob[pos + 12:pos + 12 + n]
    assert struct.unpack("<I", blob[pos + 12 + n:pos + 16 + n])[0] == masked(crc32c(data))
    pos += 16 + n
    ev = {"step": 0}
    for num, wt, v in _fields(data):
      if num == 1:
        ev["wall_time"] = struct.unpack("<d", v)[0]
      elif num == 2:
        ev["step"] = v
      elif num == 3:
        ev["file_version"] = v.decode()
      elif num == 5:
        ev["scalars"] = {}
        for vn, _, val in _fields(v):
          assert vn == 1
          f = dict((k, x) for k, _, x in _fields(val))
          ev["scalars"][f[1].decode()] = struct.unpack("<f", f[2])[0]
      elif num == 7:
        status = dict((k, x) for k, _, x in _fields(v)).get(1, 0)
        ev["session_start"] = status == 1
    events.append(ev)
  assert pos == len(blob)
  return events


def scalars_of(logdir: str) -> dict:
  """{tag: {step: [values in read order]}} over the run's event files, as TensorBoard reads
  them (files by name)."""
  out = {}
  files = sorted(f for f in os.listdir(logdir) if f.startswith("events.out.tfevents."))
  assert files, logdir
  for f in files:
    evs = parse_event_file(os.path.join(logdir, f))
    assert evs[0]["file_version"] == "brain.Event:2"
    for e in evs:
      for tag, v in e.get("scalars", {}).items():
        out.setdefault(tag, {}).setdefault(e["step"], []).append(v)
  return out


# ------------------------------------------------------------------ writer-level tests
def test_scalars_round_trip(tmp_path):
  d = str(tmp_path / "run")
  w = tb_writer.TBWriter(d)
  rows = {1: {"train/loss": 2.5, "train/lr": 1e-3}, 2: {"train/loss": 1.25, "eval/val_acc": 0.5},
          7: {"train/loss": float("nan")}}
  for s, r in rows.items():
    w.scalars(s, r, wall_time=1000.0 + s)
  w.close()
  (f,) = os.listdir(d)
  evs = parse_event_file(os.path.join(d, f))
  assert evs[0]["file_version"] == "brain.Event:2"
  got = [(e["step"], e["wall_time"], e["scalars"]) for e in evs if "scalars" in e]
  assert [g[0] for g in got] == [1, 2, 7] and [g[1] for g in got] == [1001.0, 1002.0, 1007.0]
  for (s, _, sc) in got:
    assert set(sc) == set(rows[s])
    for t, v in rows[s].items():
      if np.isnan(v):
        assert np.isnan(sc[t])
      else:
        assert sc[t] == np.float32(v)
  # The package's own reader agrees with the independent one.
  assert [e.step for e in tb_writer.read_events(os.path.join(d, f))] == [e["step"] for e in evs]


def test_rewind_then_resume_shows_each_step_once(tmp_path):
  d = str(tmp_path / "run")
  w = tb_writer.TBWriter(d)
  for s in range(1, 6):
    w.scalars(s, {"train/loss": float(s)})
  w.close()
  assert tb_writer.rewind(d, 3) == 2          # steps 4 and 5 go
  w = tb_writer.TBWriter(d, purge_step=4)
  for s in (4, 5, 6):
    w.scalars(s, {"train/loss": 10.0 * s})
  w.close()
  sc = scalars_of(d)["train/loss"]
  assert sc == {1: [1.0], 2: [2.0], 3: [3.0], 4: [40.0], 5: [50.0], 6: [60.0]}
  second = sorted(os.listdir(d))[-1]
  evs = parse_event_file(os.path.join(d, second))
  assert evs[1].get("session_start") and evs[1]["step"] == 4   # TensorBoard's purge marker


def test_torn_record_is_ignored_and_bad_crc_is_reported(tmp_path):
  d = str(tmp_path / "run")
  w = tb_writer.TBWriter(d)
  w.scalars(1, {"a": 1.0})
  w.close()
  path = os.path.join(d, os.listdir(d)[0])
  good = open(path, "rb").read()
  open(path, "ab").write(good[-20:-3])      # a record cut short by a crash
  assert len(tb_writer.read_events(path)) == 2
  bad = bytearray(good)
  bad[-1] ^= 0xFF
  open(path, "wb").write(bytes(bad))
  with pytest.raises(ValueError, match="bad crc"):
    tb_writer.read_events(path)


def test_write_error_is_a_warning_and_metrics_jsonl_continues(tmp_path, capsys):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "tensorboard").write_text("not a directory")   # makedirs below it fails
  w = MetricWriter(str(wd))
  w.write(1, loss=1.0)
  w.write(2, loss=0.5)
  assert [r["loss"] for r in w.read()] == [1.0, 0.5]
  out = capsys.readouterr().out
  assert out.count("TensorBoard writer failed") == 1   # warned once, then quiet
  assert w.rewind(1) == 1 and [r["step"] for r in w.read()] == [1]


def test_metric_writer_streams_tags_and_off_switch(tmp_path):
  wd = str(tmp_path / "wd")
  os.makedirs(wd)
  w = MetricWriter(wd, run="supernet", streams={"teacher": "teacher_"})
  w.write(5, teacher_loss=3.0, teacher_lr=0.1)
  w.write(5, teacher_val_acc=0.4)
  w.write(2, loss=2.0, images_per_s=100.0, note="text is not a scalar")
  w.write(2, val_acc_largest=0.7)
  w.close()
  t = scalars_of(os.path.join(wd, "tensorboard", "teacher"))
  assert t == {"train/loss": {5: [3.0]}, "train/lr": {5: [np.float32(0.1)]},
               "eval/val_acc": {5: [np.float32(0.4)]}}
  s = scalars_of(os.path.join(wd, "tensorboard", "supernet"))
  assert s == {"train/loss": {2: [2.0]}, "train/images_per_s": {2: [100.0]},
               "eval/val_acc_largest": {2: [np.float32(0.7)]}}
  # Rewinding the supernet stream keeps the teacher's rows (steps > 1 there too).
  assert w.rewind(1) == 2
  assert [sorted(r) for r in w.read()] == [["step", "teacher_loss", "teacher_lr", "time"],
                                           ["step", "teacher_val_acc", "time"]]
  off = str(tmp_path / "off")
  os.makedirs(off)
  w = MetricWriter(off, tensorboard=False)
  w.write(1, loss=1.0)
  w.rewind(0)
  assert not os.path.exists(os.path.join(off, "tensorboard"))


# ------------------------------------------------------------------ a real search
def _search_config(root):
  from helpers import load_config, use_digits
  c = use_digits(load_config("search_quickstart"), root)
  c.space_overrides.max_depths = (1, 1, 1, 1)
  c.space_overrides.mlp_choices = (1.0, 4.0)
  c.space_overrides.expand_choices = (1.0, 2.0)
  c.space_overrides.d_state_choices = (16,)
  c.population_size = 4
  c.num_generations = 3
  # Three objectives without the latency table (its per-op timing is the slow part here).
  c.objectives = "error,macs,params"
  c.latency = "none"
  c.latency_validation_archs = 0
  c.measure_pareto_latency = False
  c.evaluator.num_eval_batches = 1
  c.evaluator.eval_batch_size = 64
  c.evaluator.calib_batches = 1
  c.evaluator.calib_batch_size = 32
  c.evaluator.group_size = 2
  c.evaluator.num_devices = 1
  return c


def _png_size(path):
  head = open(path, "rb").read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", head[16:24])


def test_search_tensorboard_resume_plots_and_provenance(tmp_path):
  from evonas_jax import search_lib
  cfg = _search_config(tmp_path)
  wd = str(tmp_path / "s")
  assert search_lib.run_search(cfg, wd, max_generations_this_run=1) is None
  path = os.path.join(wd, "metrics.jsonl")
  before = open(path).read().splitlines(keepends=True)
  assert [json.loads(x)["step"] for x in before] == [0, 1]
  # What a crash after generation 2's row but before its checkpoint leaves: a row for step 2
  # (and a TB event for it), and a line torn mid-write.
  w = MetricWriter(wd, run="search", group="search")
  w.write(2, hypervolume=-1.0, num_pareto=99)
  with open(path, "a") as f:
    f.write('{"step": 3, "hyperv')
  res = search_lib.run_search(cfg, wd)
  lines = open(path).read().splitlines(keepends=True)
  rows = [json.loads(x) for x in lines]
  assert [r["step"] for r in rows] == [0, 1, 2, 3]
  assert lines[:2] == before                         # rows up to the checkpoint untouched
  assert rows[2]["hypervolume"] != -1.0 and rows[2]["num_pareto"] != 99
  for r in rows:
    assert r["gen_evaluated"] + r["gen_cache_hits"] == cfg.population_size   # one per candidate
    assert r["gen_xla_compiles"] >= 0
  assert rows[-1]["cache_hits"] == sum(r["gen_cache_hits"] for r in rows)

  sc = scalars_of(os.path.join(wd, "tensorboard", "search"))
  for key in ("hypervolume", "num_pareto", "gen_cache_hits", "gen_xla_compiles", "cache_hits"):
    series = sc[f"search/{key}"]
    assert sorted(series) == [0, 1, 2, 3], key
    for r in rows:
      assert series[r["step"]] == [np.float32(r[key])], (key, r["step"])

  # hypervolume.png and the pairwise (3 objectives -> 3 panels) pareto.png.
  assert _png_size(os.path.join(wd, "hypervolume.png")) == (600, 360)
  w3, _ = _png_size(os.path.join(wd, "pareto.png"))
  assert w3 == int(100 * (5.2 * 3 + 0.8))
  search_lib.plot_pareto(res["pareto"], res["pareto"], str(tmp_path / "two.png"),
                         objectives=("error", "macs"))
  assert _png_size(str(tmp_path / "two.png"))[0] == int(100 * (5.2 + 0.8))

  for name in ("pareto.json", "results.json"):
    prov = json.load(open(os.path.join(wd, name)))["provenance"]
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "evosax", "numpy"):
      assert prov["packages"][pkg] == metadata.version(pkg), pkg
    assert prov["devices"] == {"platform": "cpu", "kind": jax.devices()[0].device_kind,
                               "count": jax.device_count(),
                               "local_count": jax.local_device_count(), "process_count": 1}
    root = os.path.join(os.path.dirname(__file__), "..")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode == 0:
      assert prov["git"]["commit"] == head.stdout.strip()
    else:
      assert prov["git"] is None


def test_provenance_without_git_checkout(monkeypatch):
  from evonas_jax import provenance as prov_lib
  prov_lib.git_info.cache_clear()
  monkeypatch.setenv("PATH", "/nonexistent")       # no git executable at all
  try:
    assert prov_lib.git_info() is None
    assert prov_lib.provenance()["git"] is None
  finally:
    prov_lib.git_info.cache_clear()
