"""`experiments.py run PART --epochs N`: a count that could not finish in any sensible time is refused
before any work, saying how long it would take, unless --minutes limits the run; counts below 1,
counts too large to record, and a --minutes that is not a positive number are refused cleanly.
Our bounds (experiments.py): at most 10,000 training steps a second, a day without --minutes,
and epochs up to 2^53."""
import os
import sys
import types

import pytest
import torch

import experiments as E
from conftest import an_hour_per_step

DAY_AT_THE_BOUND = 24 * 3600 * 10_000  # training steps: a day at 10,000 steps a second
SMOKE_6B_STEPS = 2                     # an epoch of 6b in the smoke profile: 200 images, batches of 100


@pytest.fixture
def runs(monkeypatch):
    """The run_part calls a command line makes (none is carried out)."""
    calls = []
    monkeypatch.setattr(E, 'run_part', lambda *args, **kwargs: calls.append(
        {k: v for k, v in kwargs.items() if v is not None or k == 'stop_at'}))  # the switches left unset
    return calls


def run(tmp_path, *args):
    E.main(['run', '6b', '--profile', 'smoke', '--device', 'cpu', '--results-dir', str(tmp_path / 'results'), *args])


def refused(tmp_path, runs, capsys, *args):
    """The error a command line exits with; nothing was run or written."""
    with pytest.raises(SystemExit) as exit:
        run(tmp_path, *args)
    assert runs == [] and not os.path.exists(tmp_path / 'results')
    return str(exit.value.code) + capsys.readouterr().err


def test_an_absurd_epoch_count_is_refused_saying_how_long_it_would_take(tmp_path, runs, capsys):
    message = refused(tmp_path, runs, capsys, '--epochs', '99999999999999999999999')
    assert 'at most 9,007,199,254,740,992' in message
    assert '199,999,999,999,999,999,999,998 steps (2 an epoch): at least 10^11 years' in message


def test_a_count_past_a_day_at_the_bound_asks_for_minutes(tmp_path, runs, capsys):
    epochs = 10 ** 12
    message = refused(tmp_path, runs, capsys, '--epochs', str(epochs))
    assert f'{epochs * SMOKE_6B_STEPS:,} steps' in message and 'at least 6 years' in message
    assert '--minutes' in message


def test_the_limit_is_a_day_at_ten_thousand_steps_a_second(tmp_path, runs, capsys):
    """The last count under the stated bound runs; one epoch more is refused."""
    last = (DAY_AT_THE_BOUND + 10_000 - 1) // SMOKE_6B_STEPS  # steps // 10,000 still a day
    run(tmp_path, '--epochs', str(last))
    assert runs[-1]['epochs'] == last and runs[-1]['stop_at'] is None
    with pytest.raises(SystemExit, match='more than 24 hours'):
        run(tmp_path, '--epochs', str(last + 1))
    assert len(runs) == 1


def test_minutes_lift_the_refusal_and_limit_the_run(tmp_path, runs, monkeypatch):
    monkeypatch.setattr(E, 'time', types.SimpleNamespace(time=lambda: 1000.0))
    run(tmp_path, '--epochs', str(10 ** 12), '--minutes', '5')
    assert runs == [dict(stop_at=1000.0 + 300, precision='auto', seed=0, epochs=10 ** 12)]


def test_the_profiles_own_epochs_and_sensible_counts_run_unlimited(tmp_path, runs):
    run(tmp_path)
    run(tmp_path, '--epochs', '60')
    assert runs == [dict(stop_at=None, precision='auto', seed=0),
                    dict(stop_at=None, precision='auto', seed=0, epochs=60)]


@pytest.mark.parametrize('epochs', ['0', '-3'])
def test_epochs_below_one_are_refused(tmp_path, runs, capsys, epochs):
    assert f'epochs must be an integer >= 1, got {epochs}' in refused(tmp_path, runs, capsys, '--epochs', epochs)


def test_a_count_too_long_to_read_is_refused_by_the_parser(tmp_path, runs, capsys):
    message = refused(tmp_path, runs, capsys, '--epochs', '9' * 5000)
    assert message.startswith('2') and 'argument --epochs: invalid int value' in message


@pytest.mark.parametrize('minutes', ['0', '-1', 'nan', 'inf'])
def test_minutes_must_be_a_positive_number(tmp_path, runs, capsys, minutes):
    message = refused(tmp_path, runs, capsys, '--epochs', '60', '--minutes', minutes)
    assert '--minutes must be a positive number' in message


def test_a_lifted_count_trains_until_the_limit_and_stops_cleanly(tmp_path, monkeypatch, capsys):
    """10^12 epochs with --minutes 1, on a clock that jumps an hour after each training step: the
    run trains one step, checkpoints it and says how to resume."""
    an_hour_per_step(monkeypatch)
    monkeypatch.setattr(sys, 'argv', ['experiments.py'])
    run(tmp_path, '--epochs', str(10 ** 12), '--minutes', '1', '--no-progress')
    assert 'stopped at the time limit' in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / 'results' / 'smoke' / '6b' / 'checkpoint.pt', weights_only=True)
    assert checkpoint['step'] == 1 and checkpoint['config']['epochs'] == 10 ** 12
