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


def rank0(events):
    """Generator passing on what `events` yields; returns rank 0's entry of the list it returns."""
    return (yield from events)[0]
