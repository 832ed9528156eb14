"""TensorBoard event files beside metrics.jsonl: the same numbers, read back from the files."""

import glob
import os
import struct
import types

import pytest

from conftest import make_config, read_records, train_quietly
from ncf_jax import summaries

tensorboardX = pytest.importorskip('tensorboardX')
from tensorboardX import event_file_writer  # pylint: disable=wrong-import-position
from tensorboardX.proto import event_pb2  # pylint: disable=wrong-import-position


def _events(workdir) -> list:
  """Every Event of the run's event files, parsed from the TFRecord framing by hand."""
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      payload = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      out.append(event_pb2.Event.FromString(payload))
  return out


def _scalars(events) -> dict:
  """{(tag, step): value}, later events winning."""
  out = {}
  for event in events:
    for value in event.summary.value:
      if value.HasField('simple_value'):
        out[(value.tag, event.step)] = value.simple_value
  return out


def test_every_record_is_in_the_event_files(tmp_path):
  workdir = str(tmp_path / 'run')
  train_quietly(make_config(num_epochs=2, validation=True, full_ranking=True), workdir)
  records = read_records(workdir)
  found = _scalars(_events(workdir))
  for record in records:
    step = record['epoch']
    expected = {}
    for split in ('test', 'valid', 'full'):
      for k in (1, 5, 10, 20):
        expected[f'{split}/hr_{k}'] = record[split][f'hr@{k}']
        expected[f'{split}/ndcg_{k}'] = record[split][f'ndcg@{k}']
    if step > 0:
      expected.update({'train/loss': record['loss'],
                       'perf/samples_per_second': record['samples_per_second'],
                       'perf/train_seconds': record['train_seconds']})
    expected['perf/eval_seconds'] = record['eval_seconds']
    for tag, value in expected.items():
      assert found[(tag, step)] == pytest.approx(value, rel=1e-6), (tag, step)
  assert ('train/loss', 0) not in found  # epoch 0 has no training loss
  plugins = {v.metadata.plugin_data.plugin_name for e in _events(workdir)
             for v in e.summary.value}
  assert 'hparams' in plugins  # the run's hyperparameters


def test_a_resume_marks_where_earlier_events_stop_counting(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  # Both sessions in the same second of tensorboardX's clock (which names its files).
  monkeypatch.setattr(event_file_writer, 'time', types.SimpleNamespace(time=lambda: 1.7e9))
  train_quietly(make_config(num_epochs=1), workdir)
  train_quietly(make_config(num_epochs=2), workdir)
  starts = [e.step for e in _events(workdir)
            if e.HasField('session_log') and e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [0, 2]
  assert len(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))) == 2


def test_tensorboard_reads_them(tmp_path):
  accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  workdir = str(tmp_path / 'run')
  train_quietly(make_config(num_epochs=2), workdir)
  records = read_records(workdir)
  reader = accumulator.EventAccumulator(workdir)
  reader.Reload()
  hr = reader.Scalars('test/hr_10')
  assert [(e.step, round(e.value, 6)) for e in hr] == [(r['epoch'], round(r['hr'], 6))
                                                       for r in records]


def test_scalars_of_a_record():
  record = dict(epoch=3, loss=0.25, top_k=10, test={'hr@1': 0.1, 'hr': 0.5, 'ndcg@1': 0.1},
                samples_per_second=1000.0, train_seconds=2.0, eval_seconds=0.5)
  assert summaries.scalars(record) == {
      'train/loss': 0.25, 'test/hr_1': 0.1, 'test/ndcg_1': 0.1,
      'perf/samples_per_second': 1000.0, 'perf/train_seconds': 2.0, 'perf/eval_seconds': 0.5}
