"""End-to-end tests of `exp-train` / `exp-predict` (exp.nb_10) on a tiny generated ImageNet-style folder, CPU only."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ('cat', 'dog', 'fish')


def _run(*args, timeout=120):
    "Run `python -m exp.nb_10 ARGS` in a subprocess and return the CompletedProcess."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='2')
    return subprocess.run([sys.executable, '-m', 'exp.nb_10', *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "3 classes x (8 train, 4 val) small JPEGs; each class has its own colour so that the task is learnable."
    root = tmp_path_factory.mktemp('tiny')
    rng = np.random.default_rng(0)
    for split, n in (('train', 8), ('val', 4)):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
                a[..., c] += 150
                Image.fromarray(a).save(d / f'{i}.jpg', quality=90)
    return root


@pytest.fixture(scope='module')
def run_dir(folder, tmp_path_factory):
    "One real training run through the module's __main__ entry point."
    out = tmp_path_factory.mktemp('runs') / 'r1'
    p = _run('--data', folder, '--epochs', '1', '--size', '32', '--bs', '8', '--workers', '0',
             '--device', 'cpu', '--out', out, '--no-progress')
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'run saved to {out}' in p.stdout
    return out


def test_run_folder(run_dir):
    assert sorted(f.name for f in run_dir.iterdir()) == ['config.json', 'metrics.csv', 'metrics.json', 'model.pt', 'plot.png']
    rows = json.loads((run_dir / 'metrics.json').read_text())
    assert len(rows) == 1 and set(rows[0]) == {'epoch', 'train_loss', 'train_acc', 'valid_loss', 'valid_acc', 'lr', 'seconds'}
    assert 0 <= rows[0]['valid_acc'] <= 1 and np.isfinite(rows[0]['train_loss'])
    assert (run_dir / 'metrics.csv').read_text().splitlines()[0] == 'epoch,train_loss,train_acc,valid_loss,valid_acc,lr,seconds'
    cfg = json.loads((run_dir / 'config.json').read_text())
    assert (cfg['size'], cfg['epochs'], cfg['bs'], cfg['n_train'], cfg['n_valid']) == (32, 1, 8, 24, 12)
    assert cfg['vocab'] == list(CLASSES) and cfg['recipe']['arch'] == 'xresnet18'
    assert (run_dir / 'plot.png').read_bytes()[:4] == b'\x89PNG'
    assert not list(run_dir.glob('.*.tmp'))                      # no temp files left behind


def test_model_loads_weights_only(run_dir):
    ck = torch.load(run_dir / 'model.pt', weights_only=True)
    assert (ck['arch'], ck['size'], ck['vocab']) == ('xresnet18', 32, list(CLASSES))
    assert len(ck['mean']) == len(ck['std']) == 3
    from exp.nb_10 import make_model
    m = make_model(ck['arch'], 3, len(ck['vocab']), bcd=ck['bcd'])
    m.load_state_dict(ck['state_dict'])                          # strict: every key matches


def test_predict(run_dir, folder):
    from exp.nb_10 import predict
    imgs = sorted((folder / 'val').glob('*/*.jpg'))
    res = predict(imgs, run_dir)
    assert [r[0] for r in res] == [str(p) for p in imgs]
    assert all(c in CLASSES and 0 < p <= 1 for _, c, p in res)
    with pytest.raises(FileNotFoundError, match='missing.jpg'): predict([folder / 'missing.jpg'], run_dir)
    with pytest.raises(FileNotFoundError, match='model.pt'): predict(imgs, folder)


def test_predict_cli(run_dir, folder):
    img = sorted((folder / 'val' / 'dog').glob('*.jpg'))[0]
    from exp.nb_10 import predict_main
    (path, cls, prob), = predict_main([str(run_dir), str(img)])
    assert path == str(img) and cls in CLASSES and 0 < prob <= 1


def _cli_error(capsys, argv):
    "Call exp-train's main in-process; it must exit with status 2 (argparse error). Returns its stderr."
    from exp.nb_10 import main
    with pytest.raises(SystemExit) as e: main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize('args, msg', [
    (['--data', '/no/such/folder'], "argument --data: data folder '/no/such/folder' does not exist"),
    (['--lr', '-1'], 'argument --lr: must be > 0'),
    (['--bs', '0'], 'argument --bs: must be > 0'),
    (['--epochs', 'two'], 'argument --epochs'),
    (['--limit', '0'], 'argument --limit: must be > 0'),
    (['--workers', '-2'], 'argument --workers: must be >= 0'),
    (['--tricks', 'mixup,dropout'], "unknown trick(s) 'dropout'"),
    (['--arch', 'vgg16'], 'argument --arch: invalid choice'),
])
def test_bad_args(args, msg, folder, capsys):
    err = _cli_error(capsys, args if args[0] == '--data' else ['--data', folder, *args])
    assert msg in err and 'usage: exp-train' in err


def test_data_folder_without_val(tmp_path, capsys):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    assert 'no val/ subfolder' in _cli_error(capsys, ['--data', tmp_path])


def test_existing_run_folder_is_refused(run_dir, folder):
    "Through the real entry point (a subprocess): exit status 2, a message naming --out, and the old run untouched."
    before = {f.name: f.stat().st_mtime_ns for f in run_dir.iterdir()}
    p = _run('--data', folder, '--out', run_dir, timeout=60)
    assert p.returncode == 2 and 'not empty' in p.stderr and '--out' in p.stderr
    assert {f.name: f.stat().st_mtime_ns for f in run_dir.iterdir()} == before   # untouched
