"""A SIGINT that Python drops (raised inside __del__ or a weakref callback) is raised again by `check`."""
import os
import signal

import pytest

from treepo_lab.train import interrupt


@pytest.fixture
def installed():
    interrupt.install()
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt._requested = False


class SignalsInDel:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs here, inside __del__: its KeyboardInterrupt is dropped
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_dropped_sigint_is_raised_at_the_next_check(installed):
    interrupt.check()  # nothing asked yet
    SignalsInDel()  # the KeyboardInterrupt is dropped: we get to the next line
    with pytest.raises(KeyboardInterrupt):
        interrupt.check()


def test_a_sigint_still_interrupts_at_once(installed):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**6):
            pass
