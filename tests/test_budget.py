"""`train(budget=MINUTES)` / `exp-train --budget` (exp.nb_10a, planning from exp.nb_09c) on a tiny image folder.

The timings a plan is made from depend on the machine and its load, so the tests that check *what* is chosen run the
real timing (`epoch_seconds`: the throwaway learner, the loaders' state put back) and then plan from made-up seconds
per epoch, wide enough apart that the choice does not depend on how long loading took here."""
import json

import pytest
import torch

import exp.nb_10a as tool
from conftest import make_image_folder

CLASSES = ('cat', 'dog', 'fish')
TINY = dict(bs=8, workers=0, device='cpu', progress=False, arch='draft-cnn', tricks='none')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('tiny'), CLASSES, shape=(80, 96))


def _timed_then(seconds_at):
    "An `epoch_seconds` that times for real, then returns `seconds_at(side)` per training epoch, no validation."
    real = tool.epoch_seconds
    def fake(*args, **kwargs):
        real(*args, **kwargs)
        return seconds_at, lambda side: 0.
    return fake


def _weights(run_dir):
    return torch.load(run_dir / 'model.pt', weights_only=True)['state_dict']


def test_budget_picks_the_most_epochs_and_leaves_no_trace(folder, tmp_path, monkeypatch, capsys):
    """100 s per epoch at 32 px (as the side squared) and 9.5 minutes: 6 progressive epochs fit in what is left after
    loading (24, 24, 28, 32, 32, 32 px: 489 s), 7 do not (545 s). The run is then exactly the run with those options."""
    monkeypatch.setattr(tool, 'epoch_seconds', _timed_then(lambda side: 100 * (side / 32) ** 2))
    out = tool.train(folder, out=tmp_path / 'b', size=32, epochs=2, budget=9.5, **TINY)
    assert 'budget 9.5 min: 6 epochs at 32 px' in capsys.readouterr().out
    cfg = json.loads((out / 'config.json').read_text())
    assert {k: cfg['budget'][k] for k in ('minutes', 'size', 'epochs')} == dict(minutes=9.5, size=32, epochs=6)
    assert (cfg['args']['epochs'], cfg['args']['size'], cfg['args']['budget']) == (6, 32, None)
    assert len(json.loads((out / 'metrics.json').read_text())) == 6
    monkeypatch.undo()
    same = tool.train(folder, out=tmp_path / 's', size=32, epochs=6, **TINY)
    wa, wb = _weights(out), _weights(same)
    for k in wa: torch.testing.assert_close(wb[k], wa[k], atol=0, rtol=0)


def test_budget_shrinks_the_size_when_too_few_epochs_fit(folder, tmp_path, monkeypatch):
    """At 64 px 100 s per epoch: 4.5 minutes hold 2 or 3 progressive epochs, fewer than the 5 asked, so the plan goes to
    48 px (5 epochs: 219 s; 6: 275 s) and the data is loaded again at 48 px."""
    monkeypatch.setattr(tool, 'epoch_seconds', _timed_then(lambda side: 100 * (side / 64) ** 2))
    out = tool.train(folder, out=tmp_path / 'b', size=64, epochs=5, budget=4.5, **TINY)
    cfg = json.loads((out / 'config.json').read_text())
    assert (cfg['budget']['size'], cfg['budget']['epochs'], cfg['args']['size']) == (48, 5, 48)
    assert torch.load(out / 'model.pt', weights_only=True)['size'] == 48


def test_budget_too_short_and_resume(folder, tmp_path, monkeypatch, capsys):
    """A budget too short for one epoch is refused by name and leaves no run folder; a resumed budgeted run trains the
    size and epochs it chose and refuses a new --budget."""
    from exp.nb_10a import train_cli
    def cli_error(argv):
        with pytest.raises(SystemExit) as e: train_cli([str(a) for a in argv])
        assert e.value.code == 2
        return capsys.readouterr().err
    base = ['--data', folder, '--size', '32', '--bs', '8', '--workers', '0', '--device', 'cpu', '--no-progress']
    assert 'argument --budget: must be > 0, got 0' in cli_error([*base, '--budget', '0'])
    err = cli_error([*base, '--budget', '0.0001', '--out', tmp_path / 'short'])
    assert 'argument --budget: is too short' in err and 'one epoch at 32 px takes about' in err
    assert not (tmp_path / 'short').exists()
    with monkeypatch.context() as m:             # 100 s an epoch, 9.5 minutes: 5 epochs
        m.setattr(tool, 'epoch_seconds', _timed_then(lambda side: 100.))
        out = tool.train(folder, out=tmp_path / 'r', size=32, epochs=2, budget=9.5, **TINY)
    killed = tmp_path / 'killed'                 # a budgeted run killed before its first epoch ended
    killed.mkdir()
    (killed / 'config.json').write_bytes((out / 'config.json').read_bytes())
    assert "--budget 5.0 conflict(s) with the run's saved settings (budget=None)" in cli_error(
        ['--resume', killed, '--budget', '5'])
    assert tool.resume_train(killed) == killed   # the chosen size and epochs, no new plan
    cfg = json.loads((out / 'config.json').read_text())
    assert len(json.loads((killed / 'metrics.json').read_text())) == cfg['args']['epochs'] == 5
