"""Faults around `exp-train --resume` (issue 22, items 6-8): a data folder that changed under a stopped run, a run still
in use, a run killed before its first checkpoint, a run whose model.pt write failed, a bad value in config.json.

Each case asserts the one line the user sees, the exit code, and that nothing good was lost (the run folder unchanged
byte for byte after a refusal; a finished run equal to an uninterrupted one). Tiny 3-class folders, 32 px, CPU.
Run: `.venv/bin/pytest tests/test_faults_resume.py` (about half a minute on 2 cores).
"""
import errno, hashlib, json, os, shutil, signal, subprocess, sys
from pathlib import Path

import PIL.Image
import pytest
import torch

import exp.nb_10a as nb10a
from exp.nb_10a import predict_cli, train, train_cli
from conftest import Raiser, make_image_folder

pytestmark = pytest.mark.usefixtures('isolated')
ROOT = Path(__file__).resolve().parents[1]
CLASSES = ('cat', 'dog', 'fish')
KW = dict(size=32, bs=8, progress=False, workers=0, device='cpu', arch='draft-cnn', tricks='none')
T = ['--size', '32', '--bs', '8', '--no-progress', '--workers', '0', '--device', 'cpu', '--arch', 'draft-cnn',
     '--tricks', 'none']


def snapshot(folder):
    "{relative path: sha256} of every file below `folder`."
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob('*')) if p.is_file()}


def data(tmp_path):
    "A fresh 3-class folder: 8 train / 4 val JPEGs per class (24 training images)."
    return make_image_folder(tmp_path / 'data', CLASSES)


def stopped(data, out, epochs=2):
    "A run of `data` stopped by Ctrl-C at the start of epoch 2: epoch 1 is in its checkpoint.pt."
    with pytest.raises(KeyboardInterrupt):
        train(data, out=out, cbs=[Raiser(KeyboardInterrupt, 'begin_batch', epoch=1, it=0)], epochs=epochs, **KW)
    return out


def resume(capsys, out, code):
    "exp-train --resume `out`, which must end with exit status `code` (0: returns): its (stdout, stderr)."
    capsys.readouterr()
    if code == 0: assert train_cli(['--resume', out, '--no-progress']) is None
    else:
        with pytest.raises(SystemExit) as e: train_cli(['--resume', out, '--no-progress'])
        assert e.value.code == code
    return capsys.readouterr()


def one_line(err):
    "The one line of `err` after argparse's usage (no traceback, no notes)."
    lines = [s for s in err.splitlines() if not s.startswith(('usage: ', ' '))]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def same_run(a, b):
    "Run folders `a` and `b` hold the same metrics and the same model."
    ra, rb = (json.loads((d / 'metrics.json').read_text()) for d in (a, b))
    assert [r['epoch'] for r in ra] == [r['epoch'] for r in rb]
    for x, y in zip(ra, rb): assert abs(x['valid_loss'] - y['valid_loss']) < 1e-4 and x['valid_acc'] == y['valid_acc']
    ma, mb = (torch.load(d / 'model.pt', weights_only=True) for d in (a, b))
    assert {k: v for k, v in ma.items() if k != 'state_dict'} == {k: v for k, v in mb.items() if k != 'state_dict'}
    for k, v in ma['state_dict'].items(): assert torch.allclose(v, mb['state_dict'][k], atol=1e-5), k


# ============================================================================== 1. the data folder changed
@pytest.mark.parametrize('change', ['added', 'removed', 'renamed'])
def test_resume_refuses_other_classes_by_name(change, tmp_path, capsys):
    "A class added, removed or renamed since the run started: one line naming it, exit 1, the run folder untouched."
    d = data(tmp_path)
    out = stopped(d, tmp_path / 'run')
    before = snapshot(out)
    for split in ('train', 'val'):
        if change == 'added': shutil.copytree(d / split / 'cat', d / split / 'cow')
        if change == 'removed': shutil.rmtree(d / split / 'fish')
        if change == 'renamed': (d / split / 'fish').rename(d / split / 'eel')
    err = one_line(resume(capsys, out, 1).err)
    new = f"now has class(es) 'cow' that run {out} was not trained on"
    gone = f"no longer has class(es) 'fish' that run {out} was trained on"
    said = {'added': new, 'removed': gone, 'renamed': f"now has class(es) 'eel' that run {out} was not trained on"}
    assert err.startswith(f"exp-train: error: the data folder {d.resolve()} {said[change]}")
    assert err.endswith(': resume needs the same classes; start a new run with --out') and '--resume' not in err
    assert snapshot(out) == before


@pytest.mark.parametrize('n', [5, -3])
def test_resume_states_and_records_a_changed_image_count(n, tmp_path, capsys):
    "Images added or removed: one stdout line says so, config.json has the new n_train and keeps the old one."
    d = data(tmp_path)
    out = stopped(d, tmp_path / 'run')
    capsys.readouterr()
    imgs = sorted((d / 'train' / 'dog').glob('*.jpg'))
    for i in range(n): shutil.copy(imgs[i], imgs[i].with_name(f'new{i}.jpg'))
    for f in imgs[:max(-n, 0)]: f.unlink()
    said = resume(capsys, out, 0).out
    line = f"the data folder changed since epoch 1 of run {out}: n_train 24 -> {24 + n} (recorded in config.json)"
    assert said.count(line) == 1
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['n_train'] == 24 + n and cfg['n_valid'] == 12 and cfg['data_changes'] == [{'epoch': 1, 'n_train': [24, 24 + n]}]
    assert torch.load(out / 'checkpoint.pt', weights_only=True)['config'] == cfg     # a later resume sees no mismatch
    assert [r['epoch'] for r in json.loads((out / 'metrics.json').read_text())] == [1, 2] and (out / 'model.pt').is_file()


# ============================================================================== 2. unfinished runs
class ResumeMeanwhile(nb10a.Callback):
    "In the first batch of the first epoch (no checkpoint yet), run exp-train --resume on this very run."
    def __init__(self, out): self.out, self.code = out, None
    def begin_batch(self):
        if self.run.epoch == 0 and self.run.iter == 0 and self.run.in_train:
            with pytest.raises(SystemExit) as e: train_cli(['--resume', self.out, '--no-progress'])
            self.code = e.value.code


def test_resume_of_a_run_in_use_says_so(tmp_path, capsys):
    "--resume on a run still in its first epoch: 'in use', not 'start it again'; the running run is not disturbed."
    out, d = tmp_path / 'run', data(tmp_path)
    cb = ResumeMeanwhile(out)
    assert train(d, out=out, cbs=[cb], epochs=1, **KW) == out
    err = one_line(capsys.readouterr().err)
    assert cb.code == 1 and err == f"exp-train: error: run folder {out} is in use by another training process"
    same_run(out, train(d, out=tmp_path / 'alone', epochs=1, **KW))


KILL = """
import os, signal, sys
from pathlib import Path
from exp.nb_10a import Callback, train
class Kill(Callback):
    def begin_batch(self): os.kill(os.getpid(), signal.SIGKILL)
train(Path(sys.argv[1]), out=Path(sys.argv[2]), cbs=[Kill()], epochs=2, **eval(sys.argv[3]))
"""


def test_resume_after_a_kill_before_the_first_checkpoint(tmp_path, capsys):
    "Killed in its first epoch: --resume starts the run again from epoch 1 with its saved options; the result is the run."
    out, d = tmp_path / 'run', data(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, '-c', KILL, d, out, repr(KW)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL and (out / 'config.json').is_file() and not (out / 'checkpoint.pt').exists()
    said = resume(capsys, out, 0).out
    assert said.count(f"run {out} had no finished epoch: it starts again from epoch 1 with its saved options") == 1
    same_run(out, train(d, out=tmp_path / 'alone', epochs=2, **KW))


def test_resume_writes_a_missing_model_from_the_finished_checkpoint(tmp_path, capsys, monkeypatch):
    "All epochs done but model.pt could not be written (full disk): --resume writes it from checkpoint.pt and says so."
    out, d, real = tmp_path / 'run', data(tmp_path), nb10a.atomic_save
    def save(obj, path):
        if Path(path).name == 'model.pt': raise OSError(errno.ENOSPC, 'No space left on device')
        return real(obj, path)
    with monkeypatch.context() as m:
        m.setattr(nb10a, 'atomic_save', save)
        with pytest.raises(OSError): train(d, out=out, epochs=1, **KW)
    assert not (out / 'model.pt').exists()
    before = snapshot(out)
    said = resume(capsys, out, 0).out
    assert said.count(f"all 1 epochs of run {out} were done: model.pt written from checkpoint.pt") == 1
    assert said.endswith(f"run saved to {out}\n") and 'train_loss' not in said              # no training again
    assert {k: v for k, v in snapshot(out).items() if k != 'model.pt'} == before
    same_run(out, train(d, out=tmp_path / 'alone', epochs=1, **KW))
    img = next((d / 'val' / 'dog').glob('*.jpg'))
    capsys.readouterr()
    predict_cli([str(out), str(img)])
    assert capsys.readouterr().out.startswith(f"{img}\t")
    assert 'already finished all 1 epochs' in one_line(resume(capsys, out, 2).err)   # with model.pt: nothing to do


# ============================================================================== 3. a bad value in config.json
def test_bad_type_in_config_json_is_blamed_on_the_file(tmp_path, capsys):
    "args.epochs = 'five' in config.json: the line names config.json and the key, not --epochs; nothing changes."
    out = stopped(data(tmp_path), tmp_path / 'run')
    cfg = json.loads((out / 'config.json').read_text())
    cfg['args']['epochs'] = 'five'
    (out / 'config.json').write_text(json.dumps(cfg))
    before = snapshot(out)
    err = one_line(resume(capsys, out, 2).err)
    assert err.startswith(f"exp-train: error: argument --resume: its config.json has args.epochs='five', which must be an int")
    assert 'argument --epochs' not in err and snapshot(out) == before


# ============================================================================== 4. notebook 10a's saved outputs
def test_notebook_outputs_show_tables_and_no_machine_paths():
    "10a displays markdown_table (Jupyter renders it) rather than printing it; its outputs hold no machine paths."
    nb = json.loads((ROOT / 'nbs' / '10a_train.ipynb').read_text())
    outs = [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    text = json.dumps(outs)
    assert not [p for p in ('/root/', '/tmp/', '/work/') if p in text]
    assert any('text/markdown' in o.get('data', {}) and '| run | epoch |' in ''.join(o['data']['text/markdown']) for o in outs)
