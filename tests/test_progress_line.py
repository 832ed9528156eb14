"""The console says `epoch k/N` and how long the rest of the run should take."""

from ncf_jax import train


def test_record_line_says_epoch_of_total_and_run_eta():
  record = dict(epoch=3, loss=0.3, top_k=10, hr=0.5, ndcg=0.25, train_seconds=20.0,
                samples_per_second=1e6, eval_seconds=1.0)
  history = [dict(epoch=0, train_seconds=None, eval_seconds=1.0),
             dict(epoch=1, train_seconds=60.0, eval_seconds=1.0),  # compiled in this one
             dict(epoch=2, train_seconds=21.0, eval_seconds=1.0), record]
  seconds = train.run_seconds_left(history, num_epochs=20)
  assert seconds == (20.0 + 1.0) * 17
  line = train.format_record(record, 20, seconds)
  assert line.startswith('epoch 3/20  loss 0.3000')
  assert line.endswith('run ETA 5m57s')
  assert train.run_seconds_left(history[:1], 20) is None  # epoch 0: nothing trained yet
  assert 'ETA' not in train.format_record(record, 3, train.run_seconds_left(
      [dict(record, epoch=3)], 3))  # the last epoch


def test_durations():
  assert [train.format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 7620)] == [
      '0s', '59s', '1m01s', '59m59s', '1h00m', '2h07m']
