"""End-to-end tests of `exp-train` / `exp-predict` (exp.nb_10a) on a tiny generated ImageNet-style folder, CPU only."""
import json, os, socket, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ('cat', 'dog', 'fish')


def _run(*args, timeout=120):
    "Run `python -m exp.nb_10a ARGS` in a subprocess and return the CompletedProcess."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='2')
    return subprocess.run([sys.executable, '-m', 'exp.nb_10a', *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "3 classes x (8 train, 4 val) small JPEGs; each class has its own colour so that the task is learnable."
    return make_image_folder(tmp_path_factory.mktemp('tiny'), CLASSES)


@pytest.fixture(scope='module')
def run_dir(folder, tmp_path_factory):
    "One real training run through the module's __main__ entry point."
    out = tmp_path_factory.mktemp('runs') / 'r1'
    p = _run('--data', folder, '--epochs', '1', '--size', '32', '--bs', '8', '--workers', '0',
             '--device', 'cpu', '--out', out, '--no-progress')
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'run saved to {out}' in p.stdout
    return out


def test_names():
    "`import exp.nb_10` is the course's library; `from exp.nb_10a import *` adds the trainer's names, not its internals."
    import exp.nb_10, exp.nb_10a
    tool = {'TrainOptions', 'resolve', 'train', 'resume_train', 'predict', 'load_run', 'train_cli', 'predict_cli'}
    assert tool <= set(exp.nb_10a.__all__) and not tool & set(exp.nb_10.__all__)
    assert set(exp.nb_10.__all__) <= set(exp.nb_10a.__all__)
    assert not {'main', 'predict_main', 'positive', 'non_negative', 'recipe', 'check_act'} & set(exp.nb_10a.__all__)


def test_run_folder(run_dir):
    assert sorted(f.name for f in run_dir.iterdir()) == ['.exp-run.lock', 'checkpoint.pt', 'config.json', 'metrics.csv', 'metrics.json', 'model.pt', 'plot.png']
    rows = json.loads((run_dir / 'metrics.json').read_text())
    assert len(rows) == 1 and set(rows[0]) == {'epoch', 'train_loss', 'train_acc', 'valid_loss', 'valid_acc', 'lr', 'seconds'}
    assert 0 <= rows[0]['valid_acc'] <= 1 and np.isfinite(rows[0]['train_loss'])
    assert (run_dir / 'metrics.csv').read_text().splitlines()[0] == 'epoch,train_loss,train_acc,valid_loss,valid_acc,lr,seconds'
    cfg = json.loads((run_dir / 'config.json').read_text())
    a = cfg['args']                                              # the options that define the run: what --resume reads
    assert (a['size'], a['epochs'], a['bs'], cfg['n_train'], cfg['n_valid']) == (32, 1, 8, 24, 12)
    assert cfg['vocab'] == list(CLASSES) and cfg['recipe']['arch'] == 'xresnet18'
    assert a['data'] == cfg['data'] == str(Path(cfg['data']).resolve()) and a['tricks'] == 'auto' and 'device' not in a
    assert cfg['pipeline'] == cfg['args']['pipeline'] == 'fast'                              # --pipeline auto = fast
    assert (run_dir / 'plot.png').read_bytes()[:4] == b'\x89PNG'
    assert not list(run_dir.glob('.*.tmp'))                      # no temp files left behind


def test_model_loads_weights_only(run_dir):
    ck = torch.load(run_dir / 'model.pt', weights_only=True)
    assert (ck['arch'], ck['size'], ck['vocab'], ck['pipeline']) == ('xresnet18', 32, list(CLASSES), 'fast')
    assert len(ck['mean']) == len(ck['std']) == 3
    from exp.nb_10a import make_model
    m = make_model(ck['arch'], 3, len(ck['vocab']), bcd=ck['bcd'])
    m.load_state_dict(ck['state_dict'])                          # strict: every key matches


def test_fastai_like_recipe(folder, tmp_path):
    "fastai's recipe (--opt ranger --act mish --schedule flat-cos, no mixup) with --crop whole: recorded; predict rebuilds Mish."
    from exp.nb_10a import load_run, predict, TRICKS
    out = tmp_path / 'fastai-like'
    p = _run('--data', folder, '--epochs', '2', '--size', '32', '--bs', '8', '--workers', '0', '--device', 'cpu', '--no-progress',
             '--opt', 'ranger', '--act', 'mish', '--schedule', 'flat-cos', '--tricks', ','.join(t for t in TRICKS if t != 'mixup'),
             '--crop', 'whole', '--cache-dir', tmp_path / 'cache', '--out', out)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / 'config.json').read_text())['recipe']
    assert (r['opt'], r['act'], r['schedule'], r['lr'], r['mixup']) == ('ranger', 'mish', 'flat-cos', 8e-3, 0.)
    assert json.loads((out / 'config.json').read_text())['args']['crop'] == 'whole'
    names = sorted(f.name for f in (tmp_path / 'cache').glob('*.u8'))   # 32 px: whole pictures cached at 2x (64), valid at 1.14x (36)
    assert len(names) == 2 and names[0].startswith('train-64px-whole-') and names[1].startswith('valid-36px-') and 'whole' not in names[1]
    assert torch.load(out / 'model.pt', weights_only=True)['act'] == 'mish'
    model, info = load_run(out)
    assert any(isinstance(m, torch.nn.Mish) for m in model.modules())
    lrs = [row['lr'] for row in json.loads((out / 'metrics.json').read_text())]   # the lr of each epoch's last batch
    assert lrs[0] == 8e-3 and 5e-3 < lrs[1] < 7e-3          # flat for 75 % of the 6 batches, then cosine (batch 6: ~6e-3)
    assert len(predict(sorted((folder / 'val').glob('*/*.jpg'))[:2], out)) == 2


def test_stats_measured_on_own_data(run_dir, folder, tmp_path):
    "Not Imagenette: the normalisation is measured on the training images, saved in config.json and model.pt, used by predict."
    from exp.nb_10a import image_stats, imagenette_stats
    cfg = json.loads((run_dir / 'config.json').read_text())
    ck = torch.load(run_dir / 'model.pt', weights_only=True)
    files = sorted((folder / 'train').glob('*/*'))
    want = [list(v) for v in image_stats(files, 32)]
    assert cfg['args']['stats'] == 'auto' and [cfg['stats']['mean'], cfg['stats']['std']] == want == [ck['mean'], ck['std']]
    from exp.nb_10a import cpu_has_bf16
    # bf16 autocast where the CPU multiplies bf16 natively, else a no-op; config.json says which
    assert 'mixed_precision' in cfg['tricks'] and cfg['autocast'] == ('bfloat16' if cpu_has_bf16() else 'None')
    assert want[0] != list(imagenette_stats[0])
    out = tmp_path / 'fixed'
    p = _run('--data', folder, '--epochs', '1', '--size', '32', '--bs', '8', '--workers', '0', '--device', 'cpu', '--out', out,
             '--no-progress', '--stats', 'imagenette')
    assert p.returncode == 0, p.stderr[-2000:]
    assert torch.load(out / 'model.pt', weights_only=True)['mean'] == [float(v) for v in imagenette_stats[0]]


def test_predict(run_dir, folder):
    from exp.nb_10a import predict
    imgs = sorted((folder / 'val').glob('*/*.jpg'))
    res = predict(imgs, run_dir)
    assert [r[0] for r in res] == [str(p) for p in imgs]
    assert all(c in CLASSES and 0 < p <= 1 for _, c, p in res)
    from exp.nb_10a import ArgError
    with pytest.raises(ArgError, match='missing.jpg') as e: predict([folder / 'missing.jpg'], run_dir)
    assert e.value.arg == 'paths'
    with pytest.raises(ArgError, match='model.pt.: not found') as e: predict(imgs, folder)
    assert e.value.arg == 'run_dir'


def test_predict_cli(run_dir, folder, capsys):
    img = sorted((folder / 'val' / 'dog').glob('*.jpg'))[0]
    from exp.nb_10a import predict_cli
    assert predict_cli([str(run_dir), str(img)]) is None                   # a console script: prints, returns None
    path, cls, prob = capsys.readouterr().out.strip().split('\t')
    assert path == str(img) and cls in CLASSES and 0 < float(prob) <= 1
    predict_cli([str(run_dir / 'model.pt'), str(img), '--device', 'auto'])   # the file, any device
    _, cls2, prob2 = capsys.readouterr().out.strip().split('\t')
    assert cls2 == cls and abs(float(prob2) - float(prob)) < 1e-3
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e: predict_cli([str(run_dir), str(img), '--device', 'cuda'])
        assert e.value.code == 2


def test_console_scripts_exit_zero(run_dir, folder):
    "settings.ini's console scripts, run as their wrapper runs them (sys.exit(f())): exp-predict exits 0, a bad exp-train flag 2."
    import configparser
    ini = configparser.ConfigParser(); ini.read(ROOT / 'settings.ini')
    scripts = dict(e.split('=') for e in ini['DEFAULT']['console_scripts'].split())
    assert scripts == {'exp-train': 'exp.nb_10a:train_cli', 'exp-predict': 'exp.nb_10a:predict_cli'}
    def run(name, *args):
        mod, f = scripts[name].split(':')
        code = f'import sys; from {mod} import {f}; sys.exit({f}())'
        return subprocess.run([sys.executable, '-c', code, *map(str, args)], cwd=ROOT, env=_env(), capture_output=True,
                              text=True, timeout=120)
    img = sorted((folder / 'val' / 'dog').glob('*.jpg'))[0]
    r = run('exp-predict', run_dir, img)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().split('\t')[0] == str(img) and len(r.stdout.strip().splitlines()) == 1
    r = run('exp-train', '--bs', '0')
    assert r.returncode == 2 and '--bs' in r.stderr


@pytest.mark.parametrize('pipeline', ['fast', 'per-item'])
def test_pipeline_option(pipeline, folder, tmp_path):
    "--pipeline fast (cache in --cache-dir) and per-item both train; the choice is saved in config.json and model.pt."
    out, cache = tmp_path / 'run', tmp_path / 'cache'
    p = _run('--data', folder, '--epochs', '1', '--size', '32', '--bs', '8', '--workers', '0', '--device', 'cpu',
             '--arch', 'draft-cnn', '--pipeline', pipeline, '--cache-dir', cache, '--out', out, '--no-progress')
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['pipeline'] == cfg['args']['pipeline'] == pipeline and (cfg['n_train'], cfg['n_valid']) == (24, 12)
    assert torch.load(out / 'model.pt', weights_only=True)['pipeline'] == pipeline
    assert len(list(cache.glob('*.u8'))) == (2 if pipeline == 'fast' else 0)   # one cache file per split, in --cache-dir
    assert 0 <= json.loads((out / 'metrics.json').read_text())[0]['valid_acc'] <= 1


def test_pipelines_normalise_once(folder, tmp_path):
    "The batch the model sees is normalised exactly once in both pipelines: about N(0, 1) per channel, never twice."
    from exp.nb_10a import folder_databunch, build_learner, get_batch, BatchTransformXCallback, DRAFT, norm_imagenette
    stats = {}
    for pipeline in ('per-item', 'fast'):
        data = folder_databunch(folder, size=32, bs=24, num_workers=0, pipeline=pipeline, device='cpu', cache_dir=tmp_path)
        learn, run = build_learner(data, DRAFT, device='cpu')
        run.learn = learn
        xb = get_batch(data.valid_dl, run)[0]
        stats[pipeline] = xb.mean((0, 2, 3)), xb.std((0, 2, 3))
        assert sum(isinstance(c, BatchTransformXCallback) for c in run.cbs) == (pipeline == 'per-item')
    for m, s in stats.values():
        assert m.abs().max() < 1.2 and ((s > 0.3) & (s < 2)).all(), (m, s)     # twice: mean ~ -1.7, std ~ 3.7
    # same images, same statistics: the two pipelines agree on the normalisation (validation: squash vs centre square)
    assert (stats['fast'][0] - stats['per-item'][0]).abs().max() < 0.2
    with pytest.raises(ValueError, match='normalise them twice'): build_learner(data, DRAFT, norm=norm_imagenette)


def _cli_error(capsys, argv):
    "Call exp-train's train_cli in-process; it must exit with status 2 (argparse error). Returns its stderr."
    from exp.nb_10a import train_cli
    with pytest.raises(SystemExit) as e: train_cli([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize('args, msg', [
    (['--data', '/no/such/folder'], "argument --data: data folder '/no/such/folder' does not exist"),
    (['--lr', '-1'], 'argument --lr: must be > 0, got -1'),
    (['--bs', '0'], 'argument --bs: must be > 0, got 0'),
    (['--size', '100000'], 'argument --size: must be in 1..1024 (pixels), got 100000'),
    (['--epochs', '0'], 'argument --epochs: must be > 0, got 0'),
    (['--epochs', 'two'], "argument --epochs: 'two' is not an int"),
    (['--limit', '0'], 'argument --limit: must be > 0'),
    (['--workers', '-2'], 'argument --workers: must be >= 0'),
    (['--tricks', 'mixup,dropout'], "argument --tricks: unknown trick(s) 'dropout': choose from linear_lr, bcd"),
    (['--arch', 'vgg16'], "argument --arch: invalid choice: 'vgg16'"),
    (['--opt', 'adam'], "argument --opt: invalid choice: 'adam'"),
    (['--device', 'tpu'], "argument --device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got tpu"),
    (['--act', 'gelu'], 'argument --act: invalid choice'),
    (['--schedule', 'cyclic'], 'argument --schedule: invalid choice'),
    (['--arch', 'draft-cnn', '--act', 'mish'], "argument --act: applies to the xresnets; the draft CNN keeps its ReLU (got mish)"),
    (['--crop', 'zoom'], 'argument --crop: invalid choice'),
    (['--seed', '-1'], 'argument --seed: must be in [0, 2**32), got -1'),
    (['--stats', 'imagenet'], 'argument --stats: invalid choice'),
    (['--pipeline', 'per-item', '--crop', 'whole'], 'argument --crop: applies to the fast pipeline, not per-item (got whole)'),
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


# ----------------------------------------------------------------------------------------------------------------------
# Resuming and torchrun
TINY = ['--epochs', '2', '--size', '32', '--bs', '8', '--workers', '0', '--device', 'cpu', '--no-progress']

STOP_AFTER_EPOCH_1 = """
import sys
from pathlib import Path
from exp.nb_10a import *
class CtrlCAfterFirstEpoch(Callback):
    "Raise KeyboardInterrupt (what Ctrl-C raises) once epoch 1 of 2 is done and CheckpointCallback (order 20) has saved it."
    order = 30
    def after_epoch(self):
        if self.epoch == 0: raise KeyboardInterrupt
try: train(Path(sys.argv[1]), size=32, epochs=2, bs=8, arch='draft-cnn', device='cpu', workers=0, out=Path(sys.argv[2]),
           progress=False, cbs=[CtrlCAfterFirstEpoch()], opt=sys.argv[3], tricks=sys.argv[4])
except KeyboardInterrupt: print('interrupted')
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='2')


@pytest.mark.parametrize('opt', ['sgd', 'ranger'])
def test_resume_matches_uninterrupted_run(opt, folder, tmp_path, capsys):
    """A 2-epoch run stopped by KeyboardInterrupt after epoch 1, resumed with `--resume`, ends like the run done in one go.
    Every trick on (mixup's draws must be restored) but mixed precision: bf16 autocast on a CPU (oneDNN) is not
    bit-reproducible from one run to the next, so exactness is a float32 promise (README, Resuming runs)."""
    whole, cut = tmp_path / 'whole', tmp_path / 'cut'
    from exp.nb_10a import TRICKS
    tricks = ','.join(t for t in TRICKS if t != 'mixed_precision')
    p = _run('--data', folder, *TINY, '--arch', 'draft-cnn', '--opt', opt, '--tricks', tricks, '--out', whole)
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = json.loads((whole / 'config.json').read_text())
    assert cfg['args']['opt'] == cfg['recipe']['opt'] == opt and cfg['recipe']['lr'] == (8e-3 if opt == 'ranger' else 0.3)
    p = subprocess.run([sys.executable, '-c', STOP_AFTER_EPOCH_1, str(folder), str(cut), opt, tricks], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and 'interrupted' in p.stdout, p.stderr[-3000:]
    assert len(json.loads((cut / 'metrics.json').read_text())) == 1 and not (cut / 'model.pt').exists()
    err = _cli_error(capsys, ['--resume', cut, '--epochs', '3'])                  # a setting that differs from the run's
    assert '--epochs 3 conflict(s)' in err and 'epochs=2' in err
    assert json.loads((cut / 'config.json').read_text())['args']['pipeline'] == 'fast'   # resumed with its own pipeline
    err = _cli_error(capsys, ['--resume', cut, '--pipeline', 'per-item'])
    assert '--pipeline per-item conflict(s)' in err and "pipeline='fast'" in err
    other = 'sgd' if opt == 'ranger' else 'ranger'
    assert f'--opt {other} conflict(s)' in _cli_error(capsys, ['--resume', cut, '--opt', other])
    p = _run('--resume', cut, '--no-progress', '--epochs', '2')                  # the same value is not a conflict
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = [json.loads((d / 'metrics.json').read_text()) for d in (whole, cut)]
    assert [r['epoch'] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for k in ('train_loss', 'train_acc', 'valid_loss', 'valid_acc', 'lr'):
            assert abs(ra[k] - rb[k]) <= 1e-4 * max(1., abs(ra[k])), (k, ra, rb)
    wa, wb = [torch.load(d / 'model.pt', weights_only=True)['state_dict'] for d in (whole, cut)]
    for k in wa: torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=1e-4)
    assert 'argument --resume: the run already finished all 2 epochs; nothing to resume' in _cli_error(capsys, ['--resume', cut])
    assert 'argument --resume' in (e := _cli_error(capsys, ['--resume', tmp_path / 'nope'])) and 'no such folder' in e


def test_resume_trains_the_recorded_recipe(folder, tmp_path, capsys):
    """A resumed run trains with the recipe its config.json recorded, not one rebuilt from the options; a run folder
    of another format is refused with one line that says so."""
    import shutil
    from exp.nb_10a import Callback, train, resume_train, FORMAT
    class CtrlC(Callback):
        order = 30
        def after_epoch(self):
            if self.epoch == 0: raise KeyboardInterrupt
    class PeakLr(Callback):
        def after_fit(self): self.lrs = self.run.recorder.lrs[0]
    cut = tmp_path / 'cut'
    with pytest.raises(KeyboardInterrupt):
        train(folder, size=32, epochs=2, bs=8, device='cpu', workers=0, out=cut, progress=False, opt='sgd', lr=0.2, cbs=[CtrlC()])
    cfg = json.loads((cut / 'config.json').read_text())
    assert (cfg['format'], cfg['recipe']['lr'], cfg['recipe']['linear_lr'], cfg['global_bs']) == (FORMAT, 0.2, True, 8)
    assert abs(cfg['peak_lr'] - 0.2 * 8 / 256) < 1e-12                      # the scaled rate: a value of its own
    edited, other = tmp_path / 'edited', tmp_path / 'other'
    shutil.copytree(cut, edited); shutil.copytree(cut, other)
    cfg['recipe']['linear_lr'] = False                                      # a recipe whose lr is not scaled
    (edited / 'config.json').write_text(json.dumps(cfg, indent=1))
    ck = torch.load(edited / 'checkpoint.pt', weights_only=True); ck['config'] = cfg; torch.save(ck, edited / 'checkpoint.pt')
    new_lrs, edited_lrs = PeakLr(), PeakLr()
    resume_train(cut, cbs=[new_lrs]); resume_train(edited, cbs=[edited_lrs])
    assert len(new_lrs.lrs) == len(edited_lrs.lrs) == 3 and max(new_lrs.lrs) > 0           # epoch 2: 24 images / 8
    np.testing.assert_allclose(edited_lrs.lrs, np.array(new_lrs.lrs) * 256 / 8, rtol=1e-6)   # 0.2 as recorded
    (other / 'config.json').write_text(json.dumps({**cfg, 'format': FORMAT + 1}))
    with warnings.catch_warnings():
        warnings.simplefilter('error')          # refused before any comparison with the checkpoint: one message
        err = _cli_error(capsys, ['--resume', other])
    assert f'argument --resume: its config.json is format {FORMAT + 1}, this exp reads format {FORMAT}' in err
    assert len(err.strip().splitlines()[-1]) > 0 and 'Traceback' not in err


def test_torchrun_two_processes(folder, run_dir, tmp_path):
    "torchrun with 2 CPU processes (gloo), distilling from another run: one run folder, written by rank 0 only, one 'run saved' line."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    out = tmp_path / 'ddp'
    env = {k: v for k, v in _env().items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
                        f'--master_port={port}', '-m', 'exp.nb_10a', '--data', str(folder), '--arch', 'draft-cnn',
                        *TINY, '--out', str(out), '--teacher', str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.count('run saved to') == 1
    assert sorted(f.name for f in out.iterdir()) == ['.exp-run.lock', 'checkpoint.pt', 'config.json', 'metrics.csv', 'metrics.json', 'model.pt', 'plot.png']
    cfg = json.loads((out / 'config.json').read_text())
    rows = json.loads((out / 'metrics.json').read_text())
    assert cfg['world_size'] == 2 and len(rows) == 2 and all(0 <= r['valid_acc'] <= 1 for r in rows)
    assert cfg['pipeline'] == 'fast'                                             # auto under torchrun: each rank reads its shard (nb 08b)
    assert (cfg['recipe']['distill'], cfg['teacher'], cfg['global_bs']) == (0.5, str(run_dir.resolve()), 2 * 8)   # 2 processes x --bs 8
    assert cfg['peak_lr'] == cfg['recipe']['lr']                                 # the draft's lr is not scaled (nor is Ranger's)
    from exp.nb_10a import read_checkpoint
    ck = read_checkpoint(out / 'checkpoint.pt')
    assert ck['epoch'] == 2 and len(ck['rng']) == 2                             # both ranks' random states


def test_bad_images_one_error_then_skip_bad(folder, tmp_path):
    "Several unreadable images: one error naming them all (and the file with the full list); --skip-bad trains without them."
    import shutil
    data = shutil.copytree(folder, tmp_path / 'data')
    bad = [data / 'train' / 'cat' / 'zero.jpg', data / 'train' / 'dog' / 'text.png', data / 'val' / 'fish' / 'cut.jpg']
    bad[0].write_bytes(b''); bad[1].write_bytes(b'not an image'); bad[2].write_bytes((data / 'val' / 'fish' / '0.jpg').read_bytes()[:200])
    args = ['--data', data, '--epochs', '1', '--size', '32', '--bs', '8', '--workers', '0', '--device', 'cpu', '--no-progress']
    p = _run(*args, '--out', tmp_path / 'r0')
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr[-3000:]
    err = p.stderr.strip().splitlines()[-1]
    assert '3 image file(s) cannot be read' in err and all(str(b) in err for b in bad) and 'pass --skip-bad' in err
    report = Path(err.split('The full list is in ')[1].split('. Delete')[0])
    assert sorted(l.split('\t')[0] for l in report.read_text().splitlines()) == sorted(map(str, bad))
    out = tmp_path / 'r1'
    p = _run(*args, '--skip-bad', '--out', out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(l.split('\t')[0] for l in (out / 'skipped.txt').read_text().splitlines()) == sorted(map(str, bad))
    cfg = json.loads((out / 'config.json').read_text())
    assert (cfg['n_train'], cfg['n_valid']) == (24, 12) and cfg['args']['skip_bad'] is True


def test_teacher_option(folder, run_dir, tmp_path, capsys):
    "--teacher: a run on other classes is refused with the flag's name; config.json states the scaled lr of an SGD run."
    import shutil
    other = shutil.copytree(folder, tmp_path / 'other')
    (other / 'train' / 'fish').rename(other / 'train' / 'eel'); (other / 'val' / 'fish').rename(other / 'val' / 'eel')
    e = _cli_error(capsys, ['--data', other, *TINY, '--out', tmp_path / 'o1', '--teacher', run_dir])
    assert 'argument --teacher' in e and 'same classes' in e, e
    assert 'argument --teacher' in (e := _cli_error(capsys, ['--data', folder, *TINY, '--out', tmp_path / 'o2', '--teacher', tmp_path])) and 'not found' in e
    assert not (tmp_path / 'o1').exists() and not (tmp_path / 'o2').exists()
    from exp.nb_10a import train
    out = train(folder, epochs=1, size=32, bs=8, workers=0, device='cpu', progress=False, opt='sgd', out=tmp_path / 'sgd', teacher=run_dir, distill_t=2.)
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['recipe']['linear_lr'] and abs(cfg['peak_lr'] - cfg['recipe']['lr'] * 8 / 256) < 1e-12       # lr per 256 images, scaled
    assert (cfg['recipe']['distill'], cfg['recipe']['distill_t'], cfg['args']['distill_t']) == (0.5, 2., 2.)
