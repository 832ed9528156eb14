"""Programs kept for later runs in the same process: a second run of equal settings (a
notebook's next cell, a run resumed in process) traces and compiles nothing again.

`@kept(maxsize)` marks a factory whose result (a jitted program, or an object programs are
keyed by) is a pure function of its arguments, and keeps the newest `maxsize` results by
argument value; `build(factory, *args)` calls it, built anew and not kept where an argument
is not a value (an ensemble holding arrays); `forget()` drops everything kept (to free the
memory, or to count what a run builds).
"""

import functools

_FACTORIES = []  # every @kept factory of the modules imported so far


def kept(maxsize: int):
  def decorate(factory):
    cached = functools.lru_cache(maxsize=maxsize)(factory)
    _FACTORIES.append(cached)
    return cached
  return decorate


def build(factory, *args):
  """`factory(*args)`, kept when every argument is hashable."""
  try:
    hash(args)
  except TypeError:
    return factory.__wrapped__(*args)
  return factory(*args)


def forget() -> None:
  for factory in _FACTORIES:
    factory.cache_clear()
