"""The bell: a page of memory the training process and its courier share, where
``notify()`` says how far the journal goes without a system call.

Waking a sleeping process costs the waker a system call and, on a virtual machine,
an interrupt to another CPU: on the machines we measure that is more than the rest of
``notify()``. So a courier that has work looks at the bell itself, every millisecond,
and the training process only writes a number into it. Only once the courier has
looked for a while and found nothing new does it say it sleeps; the next ``notify()``
then wakes it on the socket, as it always did.

The word written is ``file << 40 | end``: the number the training process gave its
journal file when it named it on the socket, and where that file's whole lines end.
One aligned 64-bit store, so the courier never reads half of it. A file is named on
the socket before its number is rung, so the courier can tell whose end it reads.

Linux only (a memfd); elsewhere every ``notify()`` wakes the courier on the socket.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Callable

FILE_SHIFT = 40  # bits of the word for the end: a journal file is never near a terabyte
END_MASK = (1 << FILE_SHIFT) - 1
FILES = (1 << (64 - FILE_SHIFT)) - 1  # file numbers go round after this many
POLL = 0.001  # how often a busy courier looks
LINGER = 0.05  # how long it goes on looking after the last change before it sleeps
RECHECK = 0.002  # it looks once more this long after saying so: a notify() may have read the flag just before


class Bell:
    """The shared page: word 0 is the training process's (where its journal ends),
    word 1 the courier's (nonzero while it sleeps)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, mmap.PAGESIZE)
        self._words = memoryview(self._map).cast("Q")

    @classmethod
    def make(cls) -> Bell | None:
        """A new bell, or None where the platform has no memfd (or none can be made)."""
        make = getattr(os, "memfd_create", None)
        if make is None:
            return None
        fd = -1
        try:
            fd = make("afs-bell")
            os.ftruncate(fd, mmap.PAGESIZE)
            return cls(fd)
        except (OSError, ValueError):
            if fd >= 0:
                os.close(fd)
            return None

    def ring(self, file: int, end: int) -> bool:
        """The journal's file ``file`` has whole lines up to ``end``. Returns whether the
        courier sleeps, and so must be woken on the socket (and when ``end`` does not fit)."""
        if end > END_MASK:
            return True
        self._words[0] = file << FILE_SHIFT | end
        return self._words[1] != 0

    def watch(self, hear: Callable[[int, int], bool], woken: threading.Event, stopped: threading.Event) -> None:
        """The courier's look-out, until ``stopped``: each new word goes to ``hear(file,
        end)``, which returns False for a file it was not told of yet (its name is on
        the socket; the word is heard again later). After ``LINGER`` with nothing new
        it sleeps until ``woken`` (set for each wake-up that came on the socket)."""
        heard = 0
        quiet_since = time.monotonic()
        while not stopped.is_set():
            word = self._words[0]
            if word != heard and hear(word >> FILE_SHIFT, word & END_MASK):
                heard = word
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= LINGER:
                woken.clear()
                self._words[1] = 1  # from now on each notify() wakes this process on the socket
                time.sleep(RECHECK)
                if self._words[0] == word:
                    woken.wait()
                self._words[1] = 0
                quiet_since = time.monotonic()
                continue
            stopped.wait(POLL)

    def forget_descriptor(self) -> None:
        """Close the descriptor once the courier has its own (the map keeps the page)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
