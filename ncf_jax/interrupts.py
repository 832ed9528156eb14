"""SIGTERM and Ctrl-C (SIGINT) recorded when they arrive, raised where stopping is safe.

A Python signal handler that raises does so at the next bytecode of the main thread, and that
may be inside a garbage-collector callback or a `__del__` (the reads a failed Orbax restore
abandons are finalised whenever the collector runs): there the exception is printed as
"Exception ignored" and lost, and a preempted job trains on. So the handler only records the
signal, and the program calls `check()` at safe points (between compiled chunks of steps,
after an evaluation, before and after a checkpoint restore, before files are committed),
which raises `Interrupted` there. The command-line wrapper (`cli.run`) checks once more when
the command returns, so a signal is never ignored, only acted on at the next safe point.

Nothing happens at import: `install()` is called by command-line entry points only. Without
it (a notebook, a test) `check()` never raises and Ctrl-C behaves as Python's default.
"""

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []  # signal numbers, in the order they arrived


class Interrupted(KeyboardInterrupt):
  """A recorded SIGTERM or SIGINT, raised at a safe point (a KeyboardInterrupt, so code that
  lets Ctrl-C through lets this through too)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _record(signum, frame) -> None:
  """The handler: records, never raises (see the module docstring)."""
  del frame
  _received.append(signum)


def install() -> None:
  """Records SIGTERM and SIGINT from now on (main thread only, as Python requires)."""
  if threading.current_thread() is threading.main_thread():
    for sig in SIGNALS:
      signal.signal(sig, _record)


def installed() -> bool:
  return signal.getsignal(signal.SIGTERM) is _record


def received() -> int | None:
  """The first recorded signal, or None."""
  return _received[0] if _received else None


def check() -> None:
  """Raises `Interrupted` if a signal was recorded: call where stopping leaves nothing
  half-done (never inside a finaliser, a gc callback or a checkpoint save)."""
  if _received:
    raise Interrupted(_received[0])


def clear() -> None:
  """Forgets recorded signals (tests)."""
  _received.clear()
