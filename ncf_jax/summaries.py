"""TensorBoard summaries of a run, beside metrics.jsonl (which stays the source of truth).

  tensorboard --logdir workdirs

Each evaluation becomes scalars at step = epoch: `train/loss`, `test/hr_K` and
`test/ndcg_K` (HR@K, NDCG@K: TensorBoard tags take no `@`) at every K of the curve, the same under `valid/` and `full/` when the run
has them, `perf/samples_per_second`, `perf/train_seconds` (the epoch's training time) and
`perf/eval_seconds`. The run's hyperparameters go to TensorBoard's HPARAMS tab (and the
whole config as text). Written by process 0 only, into the workdir itself.

Written with tensorboardX: a small pure-Python writer (its dependencies, numpy, protobuf
and packaging, come with jax and orbax anyway) that needs neither TensorFlow nor PyTorch;
clu's metric writers write TensorBoard files only through TensorFlow (or PyTorch).

A resumed run starts its events with a session-start marker at its first epoch, so
TensorBoard drops what an interrupted process had written for that epoch and later ones
(which metrics.jsonl dropped too). The event file is opened at the first record, so a run
that fails before it leaves none behind.
"""

import json
import time

from absl import logging

PREFIXES = {'test': 'test', 'valid': 'valid', 'full': 'full'}
PERF_FIELDS = ('samples_per_second', 'train_seconds', 'eval_seconds')


def scalars(record: dict) -> dict[str, float]:
  """{tag: value} of one metrics.jsonl record (None values, e.g. epoch 0's loss, left out)."""
  out = {}
  if record.get('loss') is not None:
    out['train/loss'] = record['loss']
  for key, prefix in PREFIXES.items():
    for name, value in (record.get(key) or {}).items():
      if '@' in name and value is not None:
        out[f'{prefix}/{name.replace("@", "_")}'] = value
  for name in PERF_FIELDS:
    if record.get(name) is not None:
      out[f'perf/{name}'] = record[name]
  return {tag: float(value) for tag, value in out.items()}


class RunSummaries:
  """The TensorBoard event file of one run (process 0)."""

  def __init__(self, workdir: str, config_dict: dict):
    self.workdir, self.config_dict = workdir, config_dict
    self._writer = None
    self._unavailable = False

  def hparams(self) -> dict:
    """The config's fields as TensorBoard hyperparameters (dotted names; bool, number or str)."""
    out = {}

    def visit(tree: dict, prefix: str) -> None:
      for key, value in sorted(tree.items()):
        if isinstance(value, dict):
          visit(value, f'{prefix}{key}.')
        elif isinstance(value, (bool, int, float, str)):
          out[prefix + key] = value
        elif value is not None:
          out[prefix + key] = json.dumps(value)
    visit(self.config_dict, '')
    return out

  def _open(self, first_epoch: int, top_k: int) -> None:
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      from tensorboardX import summary as tbx_summary  # pylint: disable=g-import-not-at-top
      from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    except ImportError:
      self._unavailable = True
      logging.warning('tensorboardX is not installed: no TensorBoard summaries '
                      '(pip install tensorboardX); metrics.jsonl has every number')
      return
    # tensorboardX names a file by the second and the host only: a session starting in the
    # same second as the last (a quick resume) would overwrite its file. Nanoseconds keep
    # each session's file, and its name sorts after the earlier ones'.
    writer = tensorboardX.SummaryWriter(logdir=self.workdir, flush_secs=30,
                                        filename_suffix=f'.{time.time_ns()}')
    # Drops events of this epoch and later from earlier (interrupted) processes.
    writer.file_writer.add_event(event_pb2.Event(
        step=first_epoch, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    metric_tags = {f'test/hr_{top_k}': 0.0, f'test/ndcg_{top_k}': 0.0, 'train/loss': 0.0}
    for summary in tbx_summary.hparams(self.hparams(), metric_tags):
      writer.file_writer.add_summary(summary)
    writer.add_text('config', '```\n' + json.dumps(self.config_dict, indent=2) + '\n```',
                    first_epoch)
    self._writer = writer

  def write(self, record: dict) -> None:
    """Adds one evaluation's scalars (at step = its epoch) and flushes them."""
    if self._unavailable:
      return
    if self._writer is None:
      self._open(int(record['epoch']), int(record.get('top_k', 10)))
      if self._writer is None:
        return
    for tag, value in scalars(record).items():
      self._writer.add_scalar(tag, value, int(record['epoch']))
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
