"""The bell: a page of memory the training process and its courier share, where
``notify()`` says how far the journal goes without a system call.

Waking a sleeping process costs the waker a system call and, on a virtual machine,
an interrupt to another CPU: on the machines we measure that is more than the rest of
``notify()``. So a courier that is taking in a burst looks at the bell itself, every
millisecond, and says until when it will go on looking; while that time is ahead,
``notify()`` only writes a number. Once the courier has looked past that time and
found nothing new it sleeps, and the next ``notify()`` wakes it on the socket, as it
always did: an event after a pause costs what it did, a burst costs no wake-ups.

No ordering between the two processes' memory writes is assumed: ``notify()`` leaves
the waking to the courier only when the courier's time is at least ``MARGIN_NS`` ahead,
and the courier's last look is made after that time has passed, so a word written
that early is long visible to it.

The word written is ``file << 40 | end``: the number the training process gave its
journal file when it named it on the socket, and where that file's whole lines end.
One aligned 64-bit store, so the courier never reads half of it. A file's number
goes on the socket with its name; the courier leaves a word alone until it has read
that, so it always knows whose end it reads.

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
POLL = 0.001  # how often a courier taking in a burst looks
LINGER_NS = 10_000_000  # how long it goes on looking after the last change (a busy courier may look late)
MARGIN_NS = 1_000_000  # notify() wakes the courier unless its looking lasts this much longer
NOT_YET = (1 << 64) - 1  # word 1 until the courier's look-out starts (and looks first)


class Bell:
    """The shared page: word 0 is the training process's (where its journal ends),
    word 1 the courier's (until when, in ``time.monotonic_ns()``, it goes on looking;
    0 while it sleeps)."""

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
            bell = cls(fd)
        except (OSError, ValueError):
            if fd >= 0:
                os.close(fd)
            return None
        bell._words[1] = NOT_YET  # the courier reads the word once it starts: no wake-up before
        return bell

    def ring(self, file: int, end: int) -> bool:
        """The journal's file ``file`` has whole lines up to ``end``. Returns whether the
        courier must be woken on the socket: it sleeps, or may stop looking too soon to
        see this (and when ``end`` does not fit)."""
        if end > END_MASK:
            return True
        self._words[0] = file << FILE_SHIFT | end
        return time.monotonic_ns() + MARGIN_NS >= self._words[1]

    def watch(self, hear: Callable[[int, int], bool], woken: threading.Event, stopped: threading.Event) -> None:
        """The courier's look-out, until ``stopped``: each new word goes to ``hear(file,
        end)``, which returns False for a file it was not told of yet (its name is on
        the socket; the word is heard again later). It looks every ``POLL`` until
        ``LINGER_NS`` after the last change, then sleeps until ``woken`` (set for each
        wake-up that came on the socket)."""
        heard = 0
        self._words[1] = time.monotonic_ns() + LINGER_NS
        while not stopped.is_set():
            past = time.monotonic_ns() >= self._words[1]
            word = self._words[0]  # read after the time was looked at: a last look is made past it
            if word != heard and hear(word >> FILE_SHIFT, word & END_MASK):
                heard = word
                self._words[1] = time.monotonic_ns() + LINGER_NS
            elif past:
                woken.clear()
                self._words[1] = 0  # asleep: from now on each notify() wakes this process on the socket
                word = self._words[0]
                if word == heard or not hear(word >> FILE_SHIFT, word & END_MASK):  # (a name came meanwhile)
                    woken.wait()
                else:
                    heard = word
                self._words[1] = time.monotonic_ns() + LINGER_NS
                continue
            time.sleep(POLL)  # (an Event's wait costs twice the CPU here)

    def forget_descriptor(self) -> None:
        """Close the descriptor once the courier has its own (the map keeps the page)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
