"""The launcher's stop signals (pipeline.launch.tune_run._StopSignals) without Ray: a stand-in for Tune's SIGINT
handler (it records the stop and restores the handler it found, as Ray 2.60's ``_setup_signal_catching``)."""

import os
import signal

import pytest

from pipeline.launch.tune_run import _StopSignals


def _tune_like_handler(stops: list):
    found = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        stops.append(signum)
        signal.signal(signal.SIGINT, found)

    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("sent, expected", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM)])
def test_a_stop_signal_reaches_tunes_handler_and_is_reported(sent, expected):
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stops = []
    with _StopSignals() as stop:
        _tune_like_handler(stops)  # fit() installs Tune's handler
        os.kill(os.getpid(), sent)
    assert stops == [signal.SIGINT]  # a SIGTERM is handed to Tune's SIGINT handler: the same graceful stop
    assert stop.fired and stop.signum == expected
    assert signal.getsignal(signal.SIGINT) is before_int and signal.getsignal(signal.SIGTERM) is before_term


def test_no_signal_reports_nothing_and_a_second_sigterm_stops_at_once():
    with _StopSignals() as stop:
        _tune_like_handler([])  # a normal end: Tune's handler stays installed
    assert not stop.fired and stop.signum == 0
    with pytest.raises(KeyboardInterrupt):
        with _StopSignals():
            stops = []
            _tune_like_handler(stops)
            os.kill(os.getpid(), signal.SIGTERM)  # the first: Tune stops gracefully
            assert stops == [signal.SIGINT]
            os.kill(os.getpid(), signal.SIGTERM)  # the second: as a second Ctrl-C
