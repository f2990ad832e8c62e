import re
"""The bad-input and fault suite: every way a user's data, network, disk or keyboard can go wrong, in one file.

Each case checks two things: the error is clear (it names the file or argument and says what to do; we assert on
substrings of the message), and nothing was lost or left half-done (no partial files or folders, earlier outputs
unchanged byte for byte, the model still usable). A known gap gets `xfail(strict=True)` with a `BUG:` reason, so the
suite turns red the day it is fixed without the marker being removed (none at present: every case asserts the fix).

Everything is local: tiny ImageNet-style folders built with PIL in tmp folders, archives built with tarfile, and an
HTTP server on 127.0.0.1 (ephemeral port, in a thread). Training runs are 1 epoch of 32 px images on the CPU.
Run: `.venv/bin/pytest tests/test_faults.py` (about a minute on 2 cores).
"""
import errno, hashlib, json, os, shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import PIL.Image

import exp.nb_00a as nb00a
import exp.nb_10a as nb10a
from exp.nb_00a import ArchiveError, ChecksumError, DownloadError, data_mirror, download_data, file_sha256, untar_data
from exp.nb_08 import ImageList, get_files, open_image, UnreadableImageError
from exp.nb_08b import verify_images
from exp.nb_10a import (ArgError, atomic_save, atomic_write, folder_databunch, image_tfms,
                        load_run, train_cli, predict, predict_cli, train, parse_tricks)
from exp.nb_05 import Runner

# helpers shared with the focused test files (one definition each; tests/ is on sys.path under pytest)
from conftest import make_image_folder
from conftest import closed_port, leftovers, make_tar, jpeg_bytes
from conftest import EventLog, Raiser, loss_going_bad, tiny_learner

pytestmark = pytest.mark.usefixtures('isolated')
CLASSES = ('ant', 'bee')
TRAIN_KW = dict(size=32, epochs=1, bs=4, arch='draft-cnn', tricks='none', device='cpu', workers=0, limit=4, progress=False)
CLI_ARGS = ['--size', '32', '--epochs', '1', '--bs', '4', '--arch', 'draft-cnn', '--tricks', 'none', '--device', 'cpu',
            '--workers', '0', '--limit', '4', '--no-progress']


# ------------------------------------------------------------------------------------------------------ helpers
def data_files(folder):
    "`snapshot` of a data folder without its image cache (`.exp-cache`, which the fast pipeline writes there by design)."
    return {k: v for k, v in snapshot(folder).items() if not k.startswith('.exp-cache/')}


def snapshot(folder):
    "{relative path: sha256} of every file below `folder`: equal snapshots mean byte-for-byte identical contents."
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def absent_or_empty(folder):
    "True when `folder` does not exist or is an empty folder (a failed run must leave nothing behind)."
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def make_folder(root, n_train=4, n_valid=2, classes=CLASSES, size=32):
    "An ImageNet-style folder: train/<class>/*.jpg and val/<class>/*.jpg, each class its own dominant colour."
    return make_image_folder(root, classes, n_train, n_valid, (size, size))


def cli_error(capsys, argv):
    "Run exp-train's `train_cli` in-process; it must stop with argparse's exit status 2. Returns stderr."
    with pytest.raises(SystemExit) as e: train_cli([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def failure_text(f, capsys):
    "Call `f`, which must fail: the text a user sees (argparse's stderr for SystemExit, else the exception message)."
    with pytest.raises(BaseException) as e: f()
    if isinstance(e.value, SystemExit): return capsys.readouterr().err
    return f'{type(e.value).__name__}: {e.value}'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "2 classes x (4 train, 2 val) JPEGs of 32 px; read-only by convention (tests that damage data copy it first)."
    return make_folder(tmp_path_factory.mktemp('tiny'))


@pytest.fixture(scope='module')
def run_a(tiny, tmp_path_factory):
    "One complete training run (draft CNN, 2 classes); tests that change it work on a copy."
    out = train(tiny, out=tmp_path_factory.mktemp('runs') / 'a', **TRAIN_KW)
    assert sorted(p.name for p in out.iterdir()) == ['.exp-run.lock', 'checkpoint.pt', 'config.json', 'metrics.csv', 'metrics.json', 'model.pt', 'plot.png']
    return out


# ======================================================================================= 1-4. unreadable image files
def bad_image_bytes(kind):
    "Bytes of a broken file named like a JPEG."
    good = jpeg_bytes((64, 48))
    if kind == 'corrupt': return good[:20] + bytes(range(256)) * 8          # JPEG header, then garbage
    if kind == 'truncated': return good[:len(good) // 2]
    if kind == 'zero_bytes': return b''
    if kind == 'not_an_image': return b'<html><body>404 Not Found</body></html>\n'
    raise ValueError(kind)


@pytest.mark.parametrize('kind', ['corrupt', 'truncated', 'zero_bytes', 'not_an_image'])
def test_unreadable_image_is_named_and_skippable(kind, tmp_path, run_a):
    d = tmp_path / 'imgs'; d.mkdir()
    (d / 'good.jpg').write_bytes(jpeg_bytes((64, 48)))
    bad = d / 'bad.jpg'; bad.write_bytes(bad_image_bytes(kind))
    before = snapshot(d)
    il = ImageList.from_files(d, tfms=image_tfms(16))
    with pytest.raises(ValueError) as e: il[il.items.index(bad)]
    msg = str(e.value)
    assert str(bad) in msg and 'Replace or delete the file' in msg
    with pytest.raises(ValueError, match="Replace or delete the file"): open_image(bad)
    assert il[il.items.index(d / 'good.jpg')].shape == (3, 16, 16)            # the list is still usable
    found = verify_images(il.items, num_workers=0)                           # nb 08b: every bad file, found once
    assert [p for p, _ in found] == [str(bad)]
    # exp-predict names the file too, and the run folder is not touched
    run_before = snapshot(run_a)
    with pytest.raises(UnreadableImageError, match=f"Cannot read image file '{bad}'") as e: predict([d / 'good.jpg', bad], run_a)
    assert e.value.path == bad                                                # typed: the CLI needs no message parsing
    assert snapshot(run_a) == run_before and snapshot(d) == before            # nothing deleted or rewritten


# ======================================================================================= 5. image modes load as RGB
def mode_images(folder):
    "One file per awkward mode: grey, grey+alpha, RGBA, palette (with and without transparency), CMYK, 16-bit, 1-bit."
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    pal = PIL.Image.new('P', (20, 14), 1); pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal_t = pal.copy(); pal_t.info['transparency'] = 1             # the fill colour is transparent
    files = {'L.png': PIL.Image.new('L', (20, 14), 100), 'LA.png': PIL.Image.new('LA', (20, 14), (60, 255)),
             'RGBA.png': PIL.Image.new('RGBA', (20, 14), (200, 10, 10, 128)), 'P.png': pal, 'P_transparent.gif': pal_t,
             'CMYK.jpg': PIL.Image.new('CMYK', (20, 14), (0, 255, 255, 0)), 'CMYK.tif': PIL.Image.new('CMYK', (20, 14), (0, 255, 255, 0)),
             'I16.png': PIL.Image.fromarray(np.full((14, 20), 40000, np.uint16)), 'bilevel.bmp': PIL.Image.new('1', (20, 14), 1)}
    for name, im in files.items():
        if name.endswith('.gif'): im.save(folder / name, transparency=1)
        else: im.save(folder / name)
    return sorted(folder / n for n in files)


def test_grey_rgba_cmyk_palette_16bit_load_as_rgb(tmp_path, run_a):
    files = mode_images(tmp_path / 'modes')
    assert {PIL.Image.open(f).mode for f in files} >= {'L', 'LA', 'RGBA', 'P', 'CMYK', 'I;16', '1'}
    il = ImageList(files, tfms=image_tfms(16))
    for f, x in zip(files, il):
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32, f
        assert 0 <= float(x.min()) and float(x.max()) <= 1
    px = {f.name: (il[i][:, 0, 0] * 255).round().tolist() for i, f in enumerate(files)}
    assert px['L.png'] == [100] * 3 and px['I16.png'] == [156] * 3 and px['bilevel.bmp'] == [255] * 3
    assert px['P.png'] == [10, 200, 30] and px['P_transparent.gif'] == [255] * 3  # transparent -> white background
    assert px['CMYK.tif'] == [255, 0, 0]
    # the same files in a training folder and through exp-predict
    root = make_folder(tmp_path / 'mixed')
    for f in files: shutil.copy(f, root / 'train' / CLASSES[0] / f.name)
    data = folder_databunch(root, size=16, bs=20, num_workers=0)
    xb, yb = next(iter(data.train_dl))
    assert xb.shape == (len(data.train_ds), 3, 16, 16)
    res = predict(files, run_a)
    assert [r[0] for r in res] == [str(f) for f in files] and all(c in CLASSES and 0 < p <= 1 for _, c, p in res)


# ======================================================================================= 6-9. folder layout
def test_empty_class_folder_with_validation_images(tmp_path):
    "train/<cls> exists but is empty while val/<cls> has images: the class can never be learnt."
    root = make_folder(tmp_path / 'd')
    for f in (root / 'train' / 'bee').iterdir(): f.unlink()
    with pytest.raises(FileNotFoundError) as e: folder_databunch(root, size=16, bs=2, num_workers=0)
    assert f"{root / 'train' / 'bee'} hold no image files" in str(e.value) and 'every class needs training images' in str(e.value)


@pytest.mark.parametrize('pipeline', ['per-item', 'fast'])
def test_empty_class_folder_is_reported(pipeline, tmp_path, capsys):
    "An empty class folder (train/<cls>/ and val/<cls>/, no images) is an error naming it, not a silently dropped class."
    root = make_folder(tmp_path / 'd')
    (root / 'train' / 'empty_cls').mkdir(); (root / 'val' / 'empty_cls').mkdir()
    (root / 'train' / 'empty_cls' / 'notes.txt').write_text('not an image')
    with pytest.raises(FileNotFoundError) as e:
        folder_databunch(root, size=16, bs=2, num_workers=0, pipeline=pipeline, device='cpu')
    msg = str(e.value)
    assert str(root / 'train' / 'empty_cls') in msg and 'hold no image files' in msg and 'delete the folder' in msg
    out = tmp_path / 'run'
    err = cli_error(capsys, ['--data', root, '--out', out, *CLI_ARGS, '--pipeline', pipeline])
    assert 'argument --data' in err and str(root / 'train' / 'empty_cls') in err
    assert not out.exists() and not (root / '.exp-cache').exists()             # nothing created on the way


def test_empty_validation_class_folder_warns(tmp_path):
    "A class with training images but an empty val/<cls>/ trains (a warning names the folder): its accuracy is just not measured."
    root = make_folder(tmp_path / 'd')
    for f in (root / 'val' / 'bee').iterdir(): f.unlink()
    with pytest.warns(UserWarning, match=f"{root / 'val' / 'bee'} holds no image files"):
        data = folder_databunch(root, size=16, bs=2, num_workers=0)
    assert data.vocab == list(CLASSES) and data.n_valid == 2


def test_validation_class_not_in_training(tmp_path, capsys):
    root = make_folder(tmp_path / 'd')
    (root / 'val' / 'zebra').mkdir(); (root / 'val' / 'zebra' / '0.jpg').write_bytes(jpeg_bytes())
    with pytest.raises(FileNotFoundError) as e: folder_databunch(root, size=16, bs=2, num_workers=0)
    assert 'class folder(s) zebra with no twin in' in str(e.value) and 'every validation class needs training images' in str(e.value)
    out = tmp_path / 'run'
    err = cli_error(capsys, ['--data', root, '--out', out, *CLI_ARGS])        # a usage error, no traceback
    assert 'argument --data' in err and 'zebra' in err
    assert absent_or_empty(out)                                               # nothing half-written
    from exp.nb_08 import ImageList, SplitData, label_by_func, grandparent_splitter, parent_labeler, CategoryProcessor
    sd = SplitData.split_by_func(ImageList.from_files(root), partial(grandparent_splitter, valid_name='val'))
    with pytest.raises(ValueError) as e: label_by_func(sd, parent_labeler, proc_y=CategoryProcessor())   # the library's own check
    msg = str(e.value)
    assert "Label 'zebra' is not in the vocabulary" in msg and "'ant', 'bee'" in msg and 'needs training examples' in msg


def test_no_images_at_all(tmp_path, capsys):
    root = tmp_path / 'd'
    for split in ('train', 'val'): (root / split / 'ant').mkdir(parents=True)
    (root / 'train' / 'ant' / 'notes.txt').write_text('not an image')
    with pytest.raises(FileNotFoundError) as e: folder_databunch(root, size=16, bs=2, num_workers=0)
    msg = str(e.value)
    assert f"{root / 'train' / 'ant'} hold no image files" in msg and '.jpg' in msg and "Put the class's images there" in msg
    out = tmp_path / 'run'
    err = cli_error(capsys, ['--data', root, '--out', out, *CLI_ARGS])
    assert 'argument --data' in err and 'hold no image files' in err and "Put the class's images there" in err
    assert not out.exists()
    bare = tmp_path / 'bare'; (bare / 'train').mkdir(parents=True); (bare / 'val').mkdir()   # no class folders at all
    err = cli_error(capsys, ['--data', bare, '--out', out, *CLI_ARGS])
    assert 'argument --data' in err and f"{bare / 'train'} holds no class folders" in err and '<class>/<image files>' in err


def test_path_that_does_not_exist(tmp_path, capsys, run_a):
    missing = tmp_path / 'no' / 'such' / 'folder'
    out = tmp_path / 'run'
    err = cli_error(capsys, ['--data', missing, '--out', out, *CLI_ARGS])
    assert f"argument --data: data folder '{missing}' does not exist" in err and 'train/ and val/' in err
    assert not out.exists() and not missing.exists()                          # nothing created on the way
    with pytest.raises(FileNotFoundError, match='`path` must be a folder with train/ and val/'): folder_databunch(missing)
    a_file = tmp_path / 'images.tgz'
    a_file.write_bytes(b'not a folder')
    err = cli_error(capsys, ['--data', a_file, '--out', out, *CLI_ARGS])
    assert f"argument --data: data folder '{a_file}' is a file: `path` must be a folder" in err
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))): get_files(missing)
    with pytest.raises(ArgError, match=f"run_dir='{missing / 'model.pt'}': not found: pass a run folder"): load_run(missing)
    with pytest.raises(ArgError, match=f"paths='{missing / 'x.jpg'}': not found"): predict([missing / 'x.jpg'], run_a)
    with pytest.raises(SystemExit): predict_cli([str(run_a), str(missing / 'x.jpg')])
    assert f"argument images: not found (got {missing / 'x.jpg'})" in capsys.readouterr().err


# ======================================================================================= 10-15. downloads and archives
def test_truncated_archive_keeps_previous_extraction(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    make_tar(mirror / 'c.tgz', [(f'c/f{i}.bin', os.urandom(4000)) for i in range(10)])
    url = f'http://127.0.0.1:{closed_port()}/c.tgz'
    d = untar_data(url)
    before = snapshot(d)
    archive = tmp_path / 'data' / 'c.tgz'
    archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])  # the local archive gets truncated
    with pytest.raises(ArchiveError) as e: untar_data(url)
    msg = str(e.value)
    assert f'{archive} is not a readable archive' in msg and 'truncated or corrupt' in msg and 'force=True' in msg
    assert snapshot(d) == before and leftovers(tmp_path / 'data') == []      # old extraction intact, no temp folder
    assert untar_data(url, force=True) == d                                  # the fix the message gives works
    assert snapshot(d) | {nb00a._STAMP: ''} == before | {nb00a._STAMP: ''}


def test_checksum_mismatch(server, tmp_path):
    base, root, _ = server
    (root / 'w.bin').write_bytes(b'payload' * 1000)
    with pytest.raises(ChecksumError) as e: download_data(base + 'w.bin', sha256='0' * 64)
    msg = str(e.value)
    assert 'w.bin' in msg and f'expected {"0" * 64}' in msg and 'the bad file was deleted' in msg and 'try again' in msg
    assert not (tmp_path / 'data' / 'w.bin').exists() and leftovers(tmp_path / 'data') == []
    good = tmp_path / 'data' / 'w.bin'                                       # a verified copy is kept if the re-fetch is bad
    assert download_data(base + 'w.bin', sha256=file_sha256(root / 'w.bin')) == good
    (root / 'w.bin').write_bytes(b'tampered')
    with pytest.raises(ChecksumError): download_data(base + 'w.bin', sha256=file_sha256(good), force=True)
    assert good.read_bytes() == b'payload' * 1000 and leftovers(tmp_path / 'data') == []


def test_interrupted_download_resumes(server, tmp_path):
    base, root, h = server
    data = os.urandom(120_000)
    (root / 'big.bin').write_bytes(data)
    h.truncate.add('big.bin')                                                # the connection drops half-way
    dest, part = tmp_path / 'data' / 'big.bin', tmp_path / 'data' / 'big.bin.part'
    with pytest.raises(DownloadError) as e: download_data(base + 'big.bin', sha256=hashlib.sha256(data).hexdigest())
    msg = str(e.value)
    assert 'stopped at 60000 of 120000 bytes' in msg and str(part) in msg and 'the next call resumes it' in msg
    assert not dest.exists() and part.stat().st_size == 60_000              # never renamed into place half-done
    h.truncate.clear()
    assert download_data(base + 'big.bin', sha256=hashlib.sha256(data).hexdigest()).read_bytes() == data
    assert h.log[-1] == ('big.bin', 'bytes=60000-') and not part.exists()


def test_offline_without_mirror(tmp_path, monkeypatch):
    url = f'http://127.0.0.1:{closed_port()}/pets.tgz'
    with pytest.raises(DownloadError) as e: untar_data(url)
    msg = str(e.value)
    assert f'cannot download {url}' in msg and f"place the file pets.tgz at {tmp_path / 'data' / 'pets.tgz'}" in msg
    assert '<mirror>/pets.tgz and set EXP_DATA_MIRROR=<mirror>' in msg
    assert sorted(p.name for p in (tmp_path / 'data').iterdir()) == ['.pets.tgz.lock']   # no archive, folder or .part (the lock file stays)
    monkeypatch.setenv('EXP_DATA_MIRROR', str(tmp_path / 'no-mirror'))      # a mirror that is not there
    with pytest.raises(FileNotFoundError, match="EXP_DATA_MIRROR=.*no-mirror.* is not a folder.*or unset it"): data_mirror()
    with pytest.raises(FileNotFoundError, match='EXP_DATA_MIRROR'): download_data(url)
    # the exp-train default data set is offline too: the message says where to put imagenette2-160.tgz, no run folder is left
    monkeypatch.delenv('EXP_DATA_MIRROR')
    with pytest.raises(DownloadError, match=r'place the file imagenette2-160\.tgz at'):
        train(None, out=tmp_path / 'run', **TRAIN_KW)
    assert absent_or_empty(tmp_path / 'run')


UNSAFE = {'dotdot': ([('pkg/ok.txt', b'ok'), ('pkg/../../escape.txt', b'evil')], "'pkg/../../escape.txt'", "'..' in its path"),
          'absolute': ([('pkg/ok.txt', b'ok'), ('/tmp/exp-faults-abs-escape.txt', b'evil')], "'/tmp/exp-faults-abs-escape.txt'", 'absolute path'),
          'symlink_outside': ([('pkg/ok.txt', b'ok'), ('pkg/up', '->../../..'), ('pkg/up/escape.txt', b'evil')], "'pkg/up'", 'points outside'),
          'hardlink_outside': ([('pkg/ok.txt', b'ok'), ('pkg/h', '=>../escape.txt')], "'pkg/h'", 'points outside')}


@pytest.mark.parametrize('case', list(UNSAFE))
def test_unsafe_archive_member(case, tmp_path, monkeypatch):
    members, member, why = UNSAFE[case]
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    url = f'http://127.0.0.1:{closed_port()}/pkg.tgz'
    make_tar(mirror / 'pkg.tgz', [('pkg/ok.txt', b'version 1')])
    d = untar_data(url)
    before = snapshot(d)
    make_tar(tmp_path / 'data' / 'pkg.tgz', members)                        # the archive is replaced by a hostile one
    with pytest.raises(ArchiveError) as e: untar_data(url)
    msg = str(e.value)
    assert f'pkg.tgz: refusing member {member}' in msg and why in msg and 'nothing was extracted' in msg
    assert snapshot(d) == before and leftovers(tmp_path / 'data') == []     # previous extraction intact, no temp folder
    assert not (tmp_path / 'escape.txt').exists() and not (tmp_path / 'data' / 'escape.txt').exists()
    assert not Path('/tmp/exp-faults-abs-escape.txt').exists()


# ======================================================================================= 16-17. NaN loss and Ctrl-C
def test_nan_loss_stops_with_clear_error_and_model_stays_usable():
    learn, log = tiny_learner(), EventLog()
    learn.loss_func = loss_going_bad(6)              # 3 train + 2 valid losses per epoch: call 6 is epoch 1, batch 1 of training
    with pytest.raises(FloatingPointError) as e: Runner(cbs=[log]).fit(2, learn)
    msg = str(e.value)
    assert 'loss is nan at epoch 1, batch 1 (training' in msg and 'Lower the learning rate' in msg and 'nan_check=False' in msg
    assert log.events[-1] == 'after_fit'
    assert all(p.isfinite().all() for p in learn.model.parameters())        # the nan never reached the weights
    learn.loss_func = torch.nn.functional.cross_entropy
    Runner().fit(1, learn)                                                   # and training can go on
    assert learn.model(torch.randn(2, 5)).isfinite().all()


def test_keyboard_interrupt_mid_epoch():
    learn, log = tiny_learner(), EventLog()
    run = Runner(cbs=[log, Raiser(KeyboardInterrupt, 'after_pred', epoch=0, it=1)])
    with pytest.raises(KeyboardInterrupt): run.fit(2, learn)                  # not swallowed
    assert log.events[-2:] == ['after_pred', 'after_fit'] and run.learn is None
    assert all(p.isfinite().all() for p in learn.model.parameters())
    Runner().fit(1, learn)                                                   # the same learner trains again


def test_keyboard_interrupt_during_train_leaves_no_partial_file(run_a, tiny, tmp_path, monkeypatch):
    # run_a has built tiny's image cache, so the data folder's snapshot is the same before and after this run
    seen = {}
    def build_with_ctrl_c(*args, cbs=None, **kwargs):
        learn, run = real_build(*args, cbs=[*(cbs or []), Raiser(KeyboardInterrupt, 'after_backward', epoch=0, it=0)], **kwargs)
        seen.update(learn=learn, run=run)
        return learn, run
    real_build = nb10a.build_learner
    monkeypatch.setattr(nb10a, 'build_learner', build_with_ctrl_c)
    data_before, out = snapshot(tiny), tmp_path / 'run'
    with pytest.raises(KeyboardInterrupt) as e: train(tiny, out=out, **TRAIN_KW)
    assert not (out / 'model.pt').exists() and leftovers(out) == []         # no half-written model.pt or temp file
    assert not out.exists() and 'was removed' in ' '.join(e.value.__notes__)  # no epoch finished: nothing kept
    assert snapshot(tiny) == data_before and seen['run'].learn is None
    m = seen['learn'].model.eval()
    assert m(torch.randn(1, 3, 32, 32)).isfinite().all()


# ======================================================================================= 18. bad hyper-parameters
# The command line's own bad-option cases live in tests/test_train_cli.py (test_bad_args); here: the Python API.
@pytest.mark.parametrize('kwargs, exc, msg', [
    (dict(lr=-0.1), ArgError, 'lr=-0.1: must be > 0'),
    (dict(bs=0), ArgError, 'bs=0: must be > 0'),
    (dict(epochs=0), ArgError, 'epochs=0: must be > 0'),
    (dict(size=-3), ArgError, 'size=-3: must be in 1..1024 (pixels)'),
    (dict(size=2.5), ArgError, 'size=2.5: must be an int'),
    (dict(workers=-1), ArgError, 'workers=-1: must be >= 0'),
    (dict(pipeline='turbo'), ArgError, "pipeline='turbo': must be one of auto, per-item, fast"),
    (dict(opt='adam'), ArgError, "opt='adam': must be one of auto, sgd, ranger"),
    (dict(act='gelu'), ArgError, "act='gelu': must be one of relu, mish"),
    (dict(schedule='cyclic'), ArgError, "schedule='cyclic': must be one of auto, flat-cos, step"),
    (dict(crop='zoom'), ArgError, "crop='zoom': must be one of auto, square, whole"),
    (dict(crop='whole', pipeline='per-item'), ArgError, "crop='whole': applies to the fast pipeline, not per-item"),
    (dict(tricks='mixup,dropout'), ArgError, "unknown trick(s) 'dropout'"),
    (dict(arch='vgg16'), ArgError, "arch='vgg16': must be one of draft-cnn"),
    (dict(device='tpu'), ArgError, "device='tpu': must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
])
def test_bad_hyperparameters_api(kwargs, exc, msg, tiny, tmp_path):
    out = tmp_path / 'run'
    with pytest.raises(exc) as e: train(tiny, out=out, **{**TRAIN_KW, **kwargs})
    assert msg in str(e.value)
    assert not out.exists()                                                   # validated before anything is created


def test_bad_hyperparameters_library():
    learn = tiny_learner()
    with pytest.raises(ValueError, match="unknown trick.*'dropout'.*choose from"): parse_tricks('dropout')


# ======================================================================================= 19. incompatible checkpoints
def _checkpoint(kind, info, good):
    "model.pt contents for an incompatible-checkpoint case (None: no file)."
    if kind == 'other_arch': return dict(info, arch='xresnet18')            # draft-CNN weights, labelled ResNet-18
    if kind == 'other_class_count': return dict(info, vocab=['ant', 'bee', 'cat'])  # 2-class head, 3 class names
    if kind == 'bare_state_dict': return info['state_dict']                  # a plain torch.save(model.state_dict())
    if kind == 'truncated': return good[:len(good) // 2]


INCOMPATIBLE = {'missing': 'not found', 'other_arch': 'its weights do not fit', 'other_class_count': '(2, 256) in the checkpoint vs (3, 256)',
                'bare_state_dict': 'is not a model.pt of format', 'truncated': 'cut short, damaged or not a torch file'}


@pytest.mark.parametrize('kind', list(INCOMPATIBLE))
def test_incompatible_checkpoint(kind, run_a, tmp_path):
    run = tmp_path / 'run_b'; run.mkdir()
    good = (run_a / 'model.pt').read_bytes()
    ck = _checkpoint(kind, torch.load(run_a / 'model.pt', weights_only=True), good)
    if isinstance(ck, bytes): (run / 'model.pt').write_bytes(ck)
    elif ck is not None: torch.save(ck, run / 'model.pt')
    before, a_before = snapshot(run), snapshot(run_a)
    with pytest.raises((FileNotFoundError, ValueError)) as e: load_run(run)
    assert str(run / 'model.pt') in str(e.value)                              # names the file ...
    assert 'run folder' in str(e.value) or 'exp-train' in str(e.value)       # ... and what it should be
    assert INCOMPATIBLE[kind] in str(e.value)                                 # ... and what is wrong
    with pytest.raises((FileNotFoundError, ValueError), match='model.pt'): predict([run_a.parent / 'x.jpg'], run)
    assert snapshot(run) == before and snapshot(run_a) == a_before           # nothing rewritten
    model, info = load_run(run_a)                                            # the good run still loads and predicts
    assert info['vocab'] == list(CLASSES) and not model.training


# ======================================================================================= 20-21. read-only and full output folders
def _readonly_check(tiny, ro, capsys):
    out = ro / 'run'
    text = failure_text(lambda: train_cli(['--data', str(tiny), '--out', str(out), *CLI_ARGS]), capsys)
    assert not out.exists() and absent_or_empty(ro)
    assert str(out) in text and 'argument --out' in text, text                # names the folder and the option to change
    assert 'Traceback' not in text


@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0,
                    reason='running as root: a chmod-read-only folder is still writable; see the monkeypatched variant')
def test_read_only_output_folder_chmod(tiny, tmp_path, capsys):
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o555)
    try: _readonly_check(tiny, ro, capsys)
    finally: ro.chmod(0o755)


def test_read_only_output_folder_simulated(tiny, tmp_path, capsys, monkeypatch):
    ro = tmp_path / 'ro'; ro.mkdir()
    real_mkdir, real_mkstemp = os.mkdir, nb10a.tempfile.mkstemp
    def inside(p): return Path(os.path.abspath(p)).is_relative_to(ro)
    def mkdir(p, *a, **k):
        if inside(p): raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real_mkdir(p, *a, **k)
    def mkstemp(*a, dir=None, **k):
        if dir is not None and inside(dir): raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkstemp(*a, dir=dir, **k)
    monkeypatch.setattr(os, 'mkdir', mkdir)
    monkeypatch.setattr(nb10a.tempfile, 'mkstemp', mkstemp)
    _readonly_check(tiny, ro, capsys)
    with pytest.raises(PermissionError) as e: train(tiny, out=ro / 'run', **TRAIN_KW)     # the API: same check, same words
    assert str(ro / 'run') in str(e.value) and e.value.arg == 'out' and e.value.errno == errno.EACCES   # the CLI maps .arg
    assert absent_or_empty(ro)


class FullDisk:
    "A file object whose write stores half the bytes, then fails like a full disk."
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
    def close(self): self.f.close()
    def write(self, b):
        self.f.write(bytes(b[:len(b) // 2])); self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch):
    "Make every os.fdopen'ed file (how exp writes run files atomically) fail with ENOSPC on write."
    real = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, *a, **k: FullDisk(real(fd, *a, **k)))


@pytest.mark.parametrize('target', ['model.pt', 'metrics.json'])
def test_full_output_folder_leaves_no_partial_file(target, run_a, tmp_path, full_disk):
    run = Path(shutil.copytree(run_a, tmp_path / 'run'))
    before = snapshot(run)
    with pytest.raises(OSError) as e:
        if target == 'model.pt': atomic_save({'state_dict': {}, 'vocab': ['x']}, run / target)
        else: atomic_write(run / target, '[]' * 100_000)
    assert e.value.errno == errno.ENOSPC and 'No space left on device' in str(e.value)
    assert snapshot(run) == before and leftovers(run) == []                  # old file intact, temp file removed
    model, info = load_run(run)                                              # the run is still usable
    assert info['vocab'] == list(CLASSES)


def test_full_output_folder_message_names_file(run_a, tmp_path, full_disk):
    run = Path(shutil.copytree(run_a, tmp_path / 'run'))
    with pytest.raises(OSError) as e: atomic_save({'state_dict': {}}, run / 'model.pt')
    assert str(run / 'model.pt') in str(e.value) and 'No space left on device' in str(e.value)
    assert e.value.errno == errno.ENOSPC and 'Free some disk space' in str(e.value)   # errno kept, the fix given


def test_full_disk_during_training_cli(run_a, tiny, tmp_path, full_disk, capsys):
    "exp-train on a full disk: exit status 1 and one message naming the file (no traceback); no epoch finished, no folder."
    # run_a (module scope, made before the disk fills) has built tiny's image cache: the run's own files hit the full disk
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as e: train_cli(['--data', str(tiny), '--out', str(out), *CLI_ARGS])
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'No space left on device while writing' in err and str(out) in err
    assert 'Traceback' not in err and not out.exists()


# ======================================================================================= 22. second run, same folder
def test_second_run_same_folder_is_refused(run_a, tiny, capsys):
    before = snapshot(run_a)
    err = cli_error(capsys, ['--data', tiny, '--out', run_a, *CLI_ARGS])
    assert "argument --out: already exists and is not empty; pass a new folder" in err and str(run_a) in err
    with pytest.raises(ArgError, match='runs are never overwritten'): train(tiny, out=run_a, **TRAIN_KW)
    assert snapshot(run_a) == before                                         # byte-for-byte unchanged
    f = run_a.parent / 'a-file'; f.write_text('keep me')                     # --out naming a file is refused too
    try:
        assert 'is a file, not a folder' in cli_error(capsys, ['--data', tiny, '--out', f, *CLI_ARGS])
        assert f.read_text() == 'keep me'
    finally: f.unlink()


# ======================================================================================= 23. data breaks mid-training
@pytest.fixture(scope='module')
def failed_run(tmp_path_factory):
    "A training run whose data folder holds a truncated JPEG: (exception, run folder, bad file, data snapshot)."
    root = make_folder(tmp_path_factory.mktemp('broken'))
    bad = root / 'train' / 'bee' / '1.jpg'
    bad.write_bytes(bad.read_bytes()[:300])
    before = data_files(root)
    out = tmp_path_factory.mktemp('failed') / 'run'
    with pytest.raises(ValueError) as e:    # fixed stats: nothing reads the images before training, which fails mid-epoch 1
        train(root, out=out, **{**TRAIN_KW, 'pipeline': 'per-item', 'stats': 'imagenette'})
    return e.value, out, bad, before, root


def test_corrupt_image_found_while_measuring_stats(failed_run, tmp_path):
    "With statistics measured on the data (the default for non-Imagenette folders) the bad file is named before any run folder exists."
    exc, out, bad, before, root = failed_run
    with pytest.raises(ValueError, match=re.escape(f"1 image file(s) cannot be read: {bad}")):   # the fast pipeline's build finds it
        train(root, out=tmp_path / 'run', **TRAIN_KW)
    assert not (tmp_path / 'run').exists()


def test_corrupt_image_during_training_is_named(failed_run):
    exc, out, bad, before, root = failed_run
    assert f"Cannot read image file '{bad}'" in str(exc) and 'Replace or delete the file' in str(exc)
    assert not (out / 'model.pt').exists() and leftovers(out) == []
    assert data_files(root) == before                                        # the data set is not modified


def test_failed_training_leaves_no_half_done_run_folder(failed_run, tiny):
    "No epoch finished: the folder held nothing to resume, so it is removed and the same out= works for the next try."
    exc, out, bad, before, root = failed_run
    assert not out.exists() and 'was removed: the same folder can be used again' in ' '.join(exc.__notes__)
    assert train(tiny, out=out, **TRAIN_KW) == out and (out / 'model.pt').is_file()


@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError])
def test_failure_after_a_finished_epoch_is_resumable(exc, tiny, tmp_path, capsys):
    "Epoch 1 of 2 finished, epoch 2 fails: the folder is kept and the error says how to continue; resuming finishes the run."
    out = tmp_path / 'run'
    with pytest.raises(exc) as e: train(tiny, out=out, cbs=[Raiser(exc, 'after_pred', epoch=1, it=0)], **{**TRAIN_KW, 'epochs': 2})
    hint = f"the run folder {out} keeps checkpoint.pt (1 finished epoch(s)): resume the run from it"
    how = f"continue with resume_train('{out}') (from a shell: exp-train --resume {out})"   # names the command
    notes, cap = ' '.join(e.value.__notes__), capsys.readouterr()
    assert hint in notes and hint in cap.out and how in notes and how in cap.out + cap.err   # notices, not errors: stdout
    assert (out / 'checkpoint.pt').is_file() and not (out / 'model.pt').exists()
    assert nb10a.resume_train(out, device='cpu', workers=0, progress=False) == out
    assert [r['epoch'] for r in json.loads((out / 'metrics.json').read_text())] == [1, 2]


def test_cli_user_is_told_the_resume_command(tiny, tmp_path, capsys, monkeypatch):
    "exp-train stopped by Ctrl-C after a finished epoch: exit 130, and stdout names the command that continues the run."
    out, train0 = tmp_path / 'run', nb10a.train
    monkeypatch.setattr(nb10a, 'train', lambda **kw: train0(cbs=[Raiser(KeyboardInterrupt, 'after_pred', epoch=1, it=0)], **kw))
    with pytest.raises(SystemExit) as e: nb10a.train_cli(['--data', str(tiny), '--out', str(out), *CLI_ARGS, '--epochs', '2'])
    assert e.value.code == 130 and f"exp-train --resume {out}" in capsys.readouterr().out   # a notice
    assert nb10a.train_cli(['--resume', str(out), '--no-progress']) is None and (out / 'model.pt').is_file()


def _stopped_after_epoch_1(tiny, out, epochs=3):
    "A run of `epochs` epochs stopped by Ctrl-C at the start of its second epoch: epoch 1 is in checkpoint.pt."
    with pytest.raises(KeyboardInterrupt): train(tiny, out=out, cbs=[Raiser(KeyboardInterrupt, 'begin_batch', epoch=1, it=0)],
                                                 **{**TRAIN_KW, 'epochs': epochs})
    return out


def test_resume_rebuilds_missing_metrics_rows(tiny, tmp_path):
    "metrics.json lost (or one epoch behind, after a kill between two writes): the rows come back from the checkpoint, numbered right."
    out = _stopped_after_epoch_1(tiny, tmp_path / 'run')
    (out / 'metrics.json').unlink()
    nb10a.resume_train(out, device='cpu', workers=0, progress=False)
    rows = json.loads((out / 'metrics.json').read_text())
    assert [r['epoch'] for r in rows] == [1, 2, 3] and rows[0]['lr'] is None and rows[1]['lr'] is not None
    hist = torch.load(out / 'checkpoint.pt', weights_only=True)['history']
    assert abs(rows[0]['valid_loss'] - hist[0]['valid_loss']) < 1e-6 and abs(rows[2]['valid_acc'] - hist[2]['valid_accuracy']) < 1e-6


def test_resume_when_data_folder_moved(tiny, tmp_path, capsys):
    "The data folder of a stopped run was moved: exp-train --resume says where it should be and how to fix it, no traceback."
    data = tmp_path / 'data'; shutil.copytree(tiny, data)
    out = _stopped_after_epoch_1(data, tmp_path / 'run')
    data.rename(tmp_path / 'moved')
    with pytest.raises(SystemExit) as e: train_cli(['--resume', str(out), '--no-progress'])
    err = capsys.readouterr().err
    assert e.value.code == 1 and f"data folder {data.resolve()}" in err and 'does not exist any more' in err and 'config.json' in err
    assert (out / 'checkpoint.pt').is_file()                                  # the run is untouched, still resumable


def test_resume_keeps_the_measured_stats(tiny, tmp_path):
    "Statistics measured at the start are reused on --resume, even if the images changed since (the numbers are not re-measured)."
    data = tmp_path / 'data'; shutil.copytree(tiny, data)
    out = _stopped_after_epoch_1(data, tmp_path / 'run')
    cfg = json.loads((out / 'config.json').read_text())
    f = sorted((data / 'train').rglob('*.jpg'))[0]
    PIL.Image.new('RGB', (32, 32), 'white').save(f)                           # the data changes under the stopped run
    nb10a.resume_train(out, device='cpu', workers=0, progress=False)
    ck = torch.load(out / 'model.pt', weights_only=True)
    assert [ck['mean'], ck['std']] == [cfg['stats']['mean'], cfg['stats']['std']]
    assert nb10a.image_stats(sorted((data / 'train').rglob('*.jpg')), 32)[0] != ck['mean']   # re-measuring would differ


def test_resume_while_the_run_is_in_use(tiny, tmp_path, capsys):
    "A second exp-train on a run folder another one is using is refused, and the folder is left exactly as it was."
    out = _stopped_after_epoch_1(tiny, tmp_path / 'run')
    before = snapshot(out)
    with nb10a.run_dir_lock(out):                                              # as a running exp-train holds it
        with pytest.raises(SystemExit) as e: train_cli(['--resume', str(out), '--no-progress'])
    assert e.value.code == 1 and 'is in use by another training process' in capsys.readouterr().err
    assert snapshot(out) == before
    assert nb10a.resume_train(out, device='cpu', workers=0, progress=False) == out   # free again: resumes


def test_resume_refuses_out(tiny, tmp_path, capsys):
    out = _stopped_after_epoch_1(tiny, tmp_path / 'run', epochs=2)
    err = cli_error(capsys, ['--resume', out, '--out', tmp_path / 'other'])       # a resumed run continues in its own folder
    assert f"argument --resume: --out {tmp_path / 'other'} conflict(s) with the run's saved settings" in err


def test_bs_larger_than_training_set(tiny, tmp_path, capsys):
    "The fast pipeline drops the last partial batch: --bs above the number of training images is refused, naming both."
    with pytest.raises(SystemExit) as e: train_cli(['--data', str(tiny), '--out', str(tmp_path / 'run'), *CLI_ARGS, '--bs', '64'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'argument --bs: is larger than the 8 training images (limit=4)' in err and 'Traceback' not in err
    assert not (tmp_path / 'run').exists()




def test_failure_writing_model_after_training_keeps_weights(tiny, tmp_path, monkeypatch):
    "Every epoch done, then model.pt cannot be written: the folder keeps checkpoint.pt and the note says --resume writes model.pt from it."
    real = nb10a.atomic_save
    def save(obj, path):
        if Path(path).name == 'model.pt': raise OSError(errno.ENOSPC, 'No space left on device')
        return real(obj, path)
    monkeypatch.setattr(nb10a, 'atomic_save', save)
    out = tmp_path / 'run'
    with pytest.raises(OSError) as e: train(tiny, out=out, **TRAIN_KW)
    notes = ' '.join(e.value.__notes__)
    assert 'all 1 epochs finished' in notes and 'checkpoint.pt' in notes and f'--resume {out}) writes model.pt' in notes
    assert nb10a.read_checkpoint(out / 'checkpoint.pt')['epoch'] == 1 and not (out / 'model.pt').exists()

@pytest.mark.parametrize('pipeline', ['per-item', 'fast'])
def test_corrupt_image_cli_message(pipeline, failed_run, tmp_path, capsys):
    "exp-train names the unreadable file and says to delete or replace it, without an ImageList option a CLI user cannot pass."
    exc, _, bad, before, root = failed_run
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as e: train_cli(['--data', str(root), '--out', str(out), *CLI_ARGS, '--pipeline', pipeline])
    err = capsys.readouterr().err
    if pipeline == 'fast': assert e.value.code == 1 and f'cannot be read: {bad}' in err and '--skip-bad' in err   # the build's list
    else: assert e.value.code == 1 and f'cannot read the image file {bad}' in err and 'Delete it, or replace it' in err
    assert 'on_error' not in err and 'Traceback' not in err and not out.exists()
    assert data_files(root) == before


def test_diverging_run_from_the_cli(tiny, tmp_path, capsys):
    "The nan guard stops a run whose loss explodes: exp-train says so and what to change on its command line, no traceback."
    with pytest.raises(SystemExit) as e: train_cli(['--data', str(tiny), '--out', str(tmp_path / 'run'), *CLI_ARGS, '--lr', '1e30'])
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'training diverged: loss is' in err and 'Lower --lr' in err and 'nan_check' not in err


def test_predict_refuses_huge_images_and_folders(run_a, tmp_path, monkeypatch, capsys):
    "More pixels than PIL's safety limit, or a folder: a clear error naming the path, no traceback."
    img = tmp_path / 'big.png'; PIL.Image.new('RGB', (40, 48)).save(img)
    monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 100)                  # 1,920 pixels > 2 x the limit: PIL refuses
    with pytest.raises(UnreadableImageError, match=f"Cannot read image file '{img}': DecompressionBombError: Image size .* exceeds limit"): predict([img], run_a)
    with pytest.raises(SystemExit): predict_cli([str(run_a), str(tmp_path)])
    assert f"argument images: is a folder, not an image file (got {tmp_path})" in capsys.readouterr().err


# ======================================================================================= several unreadable images (nb 08b)
def _folder_with_bad_files(root):
    "make_folder plus four unreadable files in both splits: (folder, the bad paths)."
    root = make_folder(root)
    bad = [root / 'train' / 'ant' / 'empty.jpg', root / 'train' / 'bee' / 'text.png', root / 'train' / 'bee' / 'cut.jpg',
           root / 'val' / 'ant' / 'notjpeg.jpg']
    bad[0].write_bytes(b''); bad[1].write_bytes(b'plain text'); bad[2].write_bytes(jpeg_bytes()[:150]); bad[3].write_bytes(b'\x89PNG junk')
    return root, bad


def test_several_bad_images_one_error_then_skip(tmp_path):
    "Every unreadable file in one BadImagesError (reasons, full list in a file); skip_bad=True trains without them and says which."
    from exp.nb_10 import BadImagesError, verify_images, record_skipped
    root, bad = _folder_with_bad_files(tmp_path / 'd')
    assert sorted(p for p, _ in verify_images(get_files(root, recurse=True), num_workers=0)) == sorted(map(str, bad))
    with pytest.raises(BadImagesError) as e:
        folder_databunch(root, size=16, bs=2, num_workers=0, pipeline='fast', device='cpu', progress=False)
    msg = str(e.value)
    assert '4 image file(s) cannot be read' in msg and all(str(b) in msg for b in bad) and 'skip_bad=True' in msg
    assert isinstance(e.value, UnreadableImageError) and str(e.value.report) in msg
    assert sorted(l.split('\t')[0] for l in Path(e.value.report).read_text().splitlines()) == sorted(map(str, bad))
    for pipeline in ('fast', 'per-item'):
        data = folder_databunch(root, size=16, bs=2, num_workers=0, pipeline=pipeline, device='cpu', skip_bad=True, progress=False)
        assert (data.n_train, data.n_valid) == (8, 4) and sorted(p for p, _ in data.skipped) == sorted(map(str, bad))
        assert sum(len(yb) for _, yb in data.train_dl) == 8                   # only good images are served
        run = record_skipped(tmp_path / pipeline, data)
        assert sorted(l.split('\t')[0] for l in run.read_text().splitlines()) == sorted(map(str, bad))


def test_train_skip_bad_records_skipped(tmp_path):
    "train(skip_bad=True) on a folder with bad files: trains, and the run folder lists them in skipped.txt."
    root, bad = _folder_with_bad_files(tmp_path / 'd')
    out = tmp_path / 'run'
    kw = {**TRAIN_KW, 'limit': None}                                        # limit=4 would leave out some bad files
    with pytest.raises(nb10a.BadImagesError): train(root, out=out, **kw)
    assert absent_or_empty(out)
    assert train(root, out=out, skip_bad=True, **kw) == out
    assert sorted(l.split('\t')[0] for l in (out / 'skipped.txt').read_text().splitlines()) == sorted(map(str, bad))
