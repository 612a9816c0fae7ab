"""Generators of workers' replies, shared by the launchers.

A launcher collects a request's replies in a generator that yields rank 0's streamed tokens
and returns the replies by rank; these helpers drive such generators.
"""


def run_to_end(events):
    """Run a generator to its end, ignoring what it yields; returns its return value."""
    while True:
        try:
            next(events)
        except StopIteration as stop:
            return stop.value


def relay(events, finish=None, stopped=None):
    """Generator passing on what `events` yields; returns `finish(value)` of the value `events`
    returns (the value itself without `finish`). A reader that stops early (closes it) is
    passed on as a GeneratorExit thrown into `events`: a launcher's generator may then cancel
    its request and return what the workers returned, and `stopped` (if given) receives
    `finish` of it. (`yield from` would close `events` instead, losing that value.)"""
    done = finish or (lambda value: value)
    while True:
        try:
            item = next(events)
        except StopIteration as stop:
            return done(stop.value)
        try:
            yield item
        except GeneratorExit:
            try:
                events.throw(GeneratorExit)
            except StopIteration as stop:
                value = done(stop.value)
                if stopped is not None:
                    stopped(value)
                return value
            except GeneratorExit:
                pass
            raise


def rank0(events):
    """`relay` of `events` returning rank 0's entry of the list it returns."""
    return relay(events, lambda replies: replies[0])
