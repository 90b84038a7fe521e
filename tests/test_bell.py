"""The bell: how a busy courier learns how far the journal goes without a wake-up.

The look-out runs in a thread here, against a real shared page (a memfd), as in the
courier; the processes on both ends are tested in test_courier.py. Waits are bounded.
"""

import threading
import time

import pytest

from afs_core.delivery import bell as bell_module
from afs_core.delivery.bell import Bell

pytestmark = pytest.mark.skipif(Bell.make() is None, reason="no memfd on this platform: every notify() uses the socket")


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class LookOut:
    """A bell, its look-out thread, and what the look-out heard."""

    def __init__(self, known=(1,)):
        self.bell = Bell.make()
        self.known = set(known)
        self.heard: list[tuple[int, int]] = []
        self.woken, self.stopped = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.bell.watch,
                                       args=(lambda *word: self.hear(*word), self.woken, self.stopped))
        self.thread.start()

    def hear(self, file, end):
        if file not in self.known:
            return False
        self.heard.append((file, end))
        return True

    def asleep(self):
        return self.bell._words[1] == 0

    def stop(self):
        self.stopped.set()
        self.woken.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def look_out():
    made = LookOut()
    yield made
    made.stop()


def ring_a_burst(look_out, ends, pause=0.0002):
    """Ring each end as notify() would, waking the look-out (as the socket's wake-up
    does) each time the bell asks for it; returns how many times it asked."""
    wakes = 0
    for end in ends:
        if look_out.bell.ring(1, end):
            wakes += 1
            look_out.woken.set()
        time.sleep(pause)
    return wakes


def test_a_look_out_taking_in_a_burst_needs_hardly_any_wake_up(look_out):
    wakes = ring_a_burst(look_out, range(10, 2010, 10))  # 200 rings, about 0.2 ms apart
    assert wait_for(lambda: look_out.heard and look_out.heard[-1] == (1, 2000), 5)
    assert wakes <= 20, wakes  # without the bell, each of the 200 is a wake-up
    ends = [end for _, end in look_out.heard]
    assert ends == sorted(set(ends))  # in order, each once


def test_a_look_out_with_nothing_new_sleeps_and_then_asks_for_the_socket(look_out):
    look_out.bell.ring(1, 10)
    assert wait_for(look_out.asleep, 5)  # after LINGER_NS with nothing new
    assert wait_for(lambda: look_out.heard == [(1, 10)], 5)
    assert look_out.bell.ring(1, 20) is True  # the training process must wake it on the socket
    time.sleep(0.05)
    assert look_out.heard == [(1, 10)]  # asleep: it does not look by itself
    look_out.woken.set()  # the wake-up came
    assert wait_for(lambda: look_out.heard[-1] == (1, 20), 5)


def test_before_the_look_out_starts_notify_wakes_nothing():
    """The courier reads the word once it has started: wake-ups before that are not needed."""
    bell = Bell.make()
    assert bell.ring(1, 10) is False


def test_an_end_in_a_file_not_named_yet_is_heard_once_it_is():
    look_out = LookOut(known=())
    try:
        look_out.bell.ring(2, 50)
        assert wait_for(look_out.asleep, 5)  # nothing it can hear: it sleeps, and asks for the socket
        assert look_out.heard == []
        look_out.known.add(2)  # the name came on the socket
        look_out.woken.set()
        assert wait_for(lambda: look_out.heard == [(2, 50)], 5)
    finally:
        look_out.stop()


def test_ends_up_to_the_largest_file_fit_in_one_word():
    bell = Bell.make()
    biggest = bell_module.END_MASK
    bell.ring(12345, biggest)
    word = bell._words[0]
    assert (word >> bell_module.FILE_SHIFT, word & bell_module.END_MASK) == (12345, biggest)


def test_an_end_that_does_not_fit_asks_for_the_socket_and_leaves_the_word():
    bell = Bell.make()
    bell.ring(3, 100)
    assert bell.ring(3, bell_module.END_MASK + 1) is True
    assert bell._words[0] == 3 << bell_module.FILE_SHIFT | 100


def test_a_name_that_comes_just_as_the_look_out_falls_asleep_is_not_missed():
    """The name of a new file arrives on the socket (and its wake-up is set) right after
    the look-out's last look failed for want of it: the look-out clears that wake-up
    on its way to sleep, so it must try the word once more."""
    look_out = LookOut(known=())

    def hear(file, end):
        if file not in look_out.known:
            if time.monotonic_ns() >= look_out.bell._words[1] > 0:  # its last look: it sleeps next
                look_out.known.add(file)  # the socket's reader names the file, and wakes it
                look_out.woken.set()
            return False
        look_out.heard.append((file, end))
        return True

    look_out.hear = hear
    try:
        look_out.bell.ring(2, 50)
        assert wait_for(lambda: look_out.heard == [(2, 50)], 2)
    finally:
        look_out.stop()
