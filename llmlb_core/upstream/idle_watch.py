"""A cheap idle timeout for a loop that waits on a peer many times (a relay reading a stream).

``asyncio.timeout`` around each wait makes and cancels a timer per wait: about 4 µs per chunk
of a stream, more than checking the chunk. :class:`IdleWatch` keeps one timer for the whole
loop: a wait only moves a deadline (a float), and the timer, when it goes off before the
deadline, sets itself again for it. So a stream of many small events costs one timer per idle
period, not one per event.

Usage, around each wait::

    watch.waiting()
    try:
        chunk = await read()
    except asyncio.CancelledError:
        if watch.stalled():
            raise TimeoutError from None  # the wait went on for longer than ``seconds``
        raise  # cancelled by someone else (the client left)
    finally:
        watch.done()

and ``watch.close()`` when the loop is over. The wait is ended the way ``asyncio.timeout`` ends
it: its task is cancelled, and :meth:`IdleWatch.stalled` takes that cancellation back.
"""

from __future__ import annotations

import asyncio


class IdleWatch:
    """Cancel the task that waits once a single wait has gone on for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._task: asyncio.Task[object] | None = None  # the task waiting now (None: no wait)
        self._cancelling = 0  # its pending cancellations when the wait began
        self._timer: asyncio.TimerHandle | None = None
        self._fired = False

    def waiting(self) -> None:
        """A wait begins: the clock starts now."""
        self._deadline = self._loop.time() + self._seconds
        task = asyncio.current_task()
        assert task is not None
        self._task, self._cancelling = task, task.cancelling()
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check)

    def done(self) -> None:
        """The wait is over (whatever ended it)."""
        self._task = None

    def stalled(self) -> bool:
        """Whether the watch cancelled the wait (True once; the cancellation is taken back)."""
        if not self._fired:
            return False
        self._fired = False
        task = asyncio.current_task()
        return task is not None and task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._task is None:
            return  # no wait now: the next one sets the timer again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check)
            return
        self._fired = True
        self._task.cancel()
