"""`metrics.jsonl`: one JSON object per evaluation, appended as training goes."""

import json
import math
import os

from ncf_jax.data.ncf_format import atomic_write_text


def _clean(value):
  """JSON-safe: NaN/inf become null, NumPy scalars plain numbers."""
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if hasattr(value, 'item'):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricLog:
  """Appends records to `<workdir>/metrics.jsonl`; resuming keeps what a checkpoint covers."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, encoding='utf-8') as f:
      records = []
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          break  # a line cut short by a killed process: it and what follows are dropped
      return records

  def keep_through(self, epoch: int) -> list[dict]:
    """Rewrites the log to the records of epochs <= `epoch` (one per epoch) and returns them."""
    kept = {}
    for record in self.read():
      if record.get('epoch', math.inf) <= epoch:
        kept[record['epoch']] = record
    records = [kept[e] for e in sorted(kept)]
    atomic_write_text(self.path, ''.join(json.dumps(r) + '\n' for r in records))
    return records

  def append(self, record: dict) -> dict:
    record = _clean(record)
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())
    return record
