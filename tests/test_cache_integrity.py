"""The fast pipeline's image cache (notebook 08b) under faults: its integrity is checked where it lives, and a read-only
folder is a normal place for data.

A damaged cache (image bytes overwritten with the trailer kept, 4 KB XOR-ed in its middle, a header without
`fingerprint`) is caught: in a writable folder it is rebuilt, with one stdout line, to the pixels of a fresh build; in
a read-only folder the run stops with one `DamagedCacheError` naming the file and the fix, and the file is left as it
was. A complete cache in a read-only folder is read without creating a lock file; a folder that cannot be written sends
a new cache to the per-user cache folder (one stdout line). A class folder missing from val/ warns.

How a folder is made read-only (`read_only`): as a non-root user `chmod 555`; as root a read-only bind mount of the
folder over itself (`mount --bind -o ro`, undone with `umount -l`) when `mount` works in this container; otherwise the
cache's `file_lock` is patched to fail with EROFS (every build takes that lock first). The test of another user runs
`exp-train` as user 65534 under `setpriv` when this runs as root with `setpriv` installed, else as this user on folders
chmod'ed read-only.
"""
import contextlib, errno, json, math, os, shutil, struct, subprocess, sys, tempfile
from pathlib import Path

import filelock
import numpy as np
import pytest
import torch

import exp.nb_08b as nb08b
from exp.nb_08b import (CACHE_MAGIC, DamagedCacheError, cache_meta, check_image_folder, folder_databunch,
                        mapped_images, verify_cache)
from exp.nb_10a import train_cli
from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ('ant', 'bee', 'cat')
PX = 32


def _works(cmd):
    "True when command `cmd` exits 0."
    try: return subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError: return False


@contextlib.contextmanager
def read_only(folder, monkeypatch):
    "`folder` read-only for this process (see the module docstring); yields how."
    folder = str(folder)
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try: yield 'chmod'
        finally: os.chmod(folder, 0o755)
    elif _works(['mount', '--bind', '-o', 'ro', folder, folder]):
        try: yield 'bind mount'
        finally: subprocess.run(['umount', '-l', folder], check=True)
    else:
        def lock(path, *a, **k):
            if str(path).startswith(folder): raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return filelock.FileLock(path, *a, **k)
        monkeypatch.setattr(nb08b, 'file_lock', lock)
        yield 'patched file_lock'


def train_files(root):
    "The training images of folder `root`, sorted."
    return sorted(str(p) for p in (Path(root) / 'train').rglob('*.jpg'))


def build(root, cache_file, **kw):
    "The pixels (a copy) of `mapped_images` over `root`'s training images in `cache_file`."
    images, _ = mapped_images(train_files(root), PX, cache_file, num_workers=0, progress=False, **kw)
    return images.x.clone()


# ------------------------------------------------------------------------------------------------ three damages
def overwrite_images(path):
    "Every image byte replaced by noise; the header and trailer kept."
    n = math.prod(cache_meta(path)['shape'])
    with open(path, 'r+b') as f: f.write(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())


def xor_4kb(path):
    "4 KB in the middle of the file XOR-ed with 0xFF."
    data = bytearray(path.read_bytes())
    mid = len(data) // 2 - 2048
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    path.write_bytes(bytes(data))


def header_without_fingerprint(path):
    "The header rewritten without its `fingerprint` (lengths and trailer consistent)."
    meta = cache_meta(path)
    head = json.dumps({k: v for k, v in meta.items() if k != 'fingerprint'}).encode()
    path.write_bytes(path.read_bytes()[:math.prod(meta['shape'])] + head + struct.pack('<Q', len(head)) + CACHE_MAGIC)


DAMAGES = [(overwrite_images, 'fail their checksum'), (xor_4kb, 'fail their checksum'),
           (header_without_fingerprint, 'malformed header')]


@pytest.fixture
def data(tmp_path):
    "3 classes x (6 train, 2 val) 32 px JPEGs."
    return make_image_folder(tmp_path / 'd', CLASSES, n_train=6, n_valid=2, shape=(PX, PX))


@pytest.mark.parametrize('damage,why', DAMAGES, ids=[d.__name__ for d, _ in DAMAGES])
def test_damaged_cache_is_rebuilt(data, tmp_path, capsys, damage, why):
    "Writable folder: the damage is named on one stdout line, the cache rebuilt to the pixels of a fresh build."
    fresh = build(data, tmp_path / 'fresh' / 'c.u8')
    cf = tmp_path / 'c' / 'c.u8'
    build(data, cf)
    damage(cf)
    with pytest.raises(DamagedCacheError, match=why): verify_cache(cf, cache_meta(cf))
    capsys.readouterr()
    assert torch.equal(build(data, cf), fresh)
    said = [l for l in capsys.readouterr().out.splitlines() if 'damaged' in l]
    assert len(said) == 1 and said[0].startswith(f'image cache {cf} is damaged (') and said[0].endswith(': rebuilding it')
    verify_cache(cf, cache_meta(cf))                                     # the new file is whole


@pytest.mark.parametrize('damage,why', DAMAGES, ids=[d.__name__ for d, _ in DAMAGES])
def test_damaged_cache_read_only_stops(data, tmp_path, monkeypatch, damage, why):
    "Read-only folder: one DamagedCacheError naming the file and the fix; the file untouched, no fallback copy."
    cf = tmp_path / 'c' / 'c.u8'
    build(data, cf)
    damage(cf)
    before = cf.read_bytes()
    with read_only(cf.parent, monkeypatch) as how:
        with pytest.raises(DamagedCacheError) as e: build(data, cf, fallback=tmp_path / 'elsewhere')
    msg = str(e.value)
    assert msg.startswith(f'image cache {cf} is damaged (') and why in msg, how
    assert 'delete the file' in msg and 'cache_dir' in msg and e.value.path == cf
    assert cf.read_bytes() == before and not (tmp_path / 'elsewhere').exists()


def test_cli_damaged_read_only_cache_one_line(data, tmp_path, monkeypatch, capsys):
    "exp-train on a damaged cache it cannot rebuild: exit 1, one line naming the file; no run folder is left."
    cache = tmp_path / 'cache'
    args = ['--data', data, '--pipeline', 'fast', '--size', PX, '--bs', 8, '--no-progress', '--epochs', 1,
            '--arch', 'draft-cnn', '--device', 'cpu', '--workers', 0, '--cache-dir', cache]
    train_cli([str(a) for a in args + ['--out', tmp_path / 'r1']])
    cf, = cache.glob('train-*.u8')
    xor_4kb(cf)
    capsys.readouterr()
    with read_only(cache, monkeypatch), pytest.raises(SystemExit) as e:
        train_cli([str(a) for a in args + ['--out', tmp_path / 'r2']])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1, err
    assert err.startswith(f'exp-train: error: image cache {cf} is damaged (') and 'delete the file' in err
    assert 'another --cache-dir' in err   # the CLI names its flag, not the Python argument
    assert not (tmp_path / 'r2').exists() or not any((tmp_path / 'r2').iterdir())


# ------------------------------------------------------------------------------------------- read-only folders
def test_complete_cache_read_only_without_lock(data, tmp_path, monkeypatch):
    "A complete, valid cache in a read-only folder is read as it is: no lock file, nothing written."
    cf = tmp_path / 'c' / 'c.u8'
    x = build(data, cf)
    for f in cf.parent.glob('.*.lock'): f.unlink()
    with read_only(cf.parent, monkeypatch) as how:
        assert torch.equal(build(data, cf, fallback=tmp_path / 'elsewhere'), x), how
    assert os.listdir(cf.parent) == ['c.u8'] and not (tmp_path / 'elsewhere').exists()


def test_unwritable_data_folder_falls_back(data, tmp_path, monkeypatch, capsys):
    "No cache_dir, data folder read-only: the caches go to $XDG_CACHE_HOME/exp, said on one line; cache_dir is not."
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    kw = dict(size=16, bs=2, num_workers=0, pipeline='fast', device='cpu', progress=False)
    with read_only(data, monkeypatch) as how:
        d = folder_databunch(data, **kw)
        assert d.n_train == 18, how
        out = capsys.readouterr().out
        assert out.count(f'cannot be written: the image cache goes to {tmp_path / "xdg" / "exp"}') == 1  # both splits
        assert sorted(f.name[:5] for f in (tmp_path / 'xdg' / 'exp').glob('*.u8')) == ['train', 'valid']
        with pytest.raises(OSError) as e: folder_databunch(data, cache_dir=data / 'cache', **kw)
    assert e.value.arg == 'cache_dir' and str(data / 'cache') in str(e.value)    # an explicit cache_dir: no fallback


def test_other_user_trains_on_shared_read_only_data():
    """Another user, data folder not theirs: with no cache, exp-train falls back to their cache folder; with the owner's
    cache complete, it reads it without a lock file or a fallback."""
    as_root = os.geteuid() == 0
    if as_root and not _works(['setpriv', '--reuid', '65534', '--regid', '65534', '--clear-groups', 'true']):
        pytest.skip('setpriv cannot switch users here')
    other = ['setpriv', '--reuid', '65534', '--regid', '65534', '--clear-groups'] if as_root else []
    base = Path(tempfile.mkdtemp())                          # pytest's tmp_path is private to its owner
    try:
        os.chmod(base, 0o755)
        root = make_image_folder(base / 'data', CLASSES, n_train=6, n_valid=2, shape=(PX, PX))
        home = base / 'home'
        home.mkdir(mode=0o777)
        os.chmod(home, 0o777)
        env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(home), XDG_CACHE_HOME=str(home / 'xdg'),
                   OMP_NUM_THREADS='1', MPLBACKEND='Agg')
        def run(out, as_other=True):
            cmd = [sys.executable, '-m', 'exp.nb_10a', '--data', root, '--pipeline', 'fast', '--size', PX, '--bs', 8,
                   '--no-progress', '--epochs', 1, '--arch', 'draft-cnn', '--device', 'cpu', '--workers', 0,
                   '--out', home / out]
            ro = [] if as_root else [root] + list(root.glob('.exp-cache'))
            for d in ro: os.chmod(d, 0o555 if as_other else 0o755)
            try: p = subprocess.run([*(other if as_other else []), *map(str, cmd)], env=env, cwd=base, capture_output=True, text=True, timeout=300)
            finally:
                for d in ro: os.chmod(d, 0o755)
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
            return p.stdout
        out = run('r1')                                                           # no cache anywhere yet
        assert out.count(f'cannot be written: the image cache goes to {home / "xdg" / "exp"}') == 1
        assert not (root / '.exp-cache').exists() and len(list((home / 'xdg' / 'exp').glob('*.u8'))) == 2
        run('r2', as_other=False)                                                        # the owner builds the shared cache
        for f in (root / '.exp-cache').glob('.*.lock'): f.unlink()
        before = sorted(os.listdir(root / '.exp-cache'))
        out = run('r3')
        assert 'cannot be written' not in out and sorted(os.listdir(root / '.exp-cache')) == before
    finally: shutil.rmtree(base)


# ------------------------------------------------------------------------------------------------- val/ folders
def test_class_missing_from_val_warns(data):
    "A class folder in train/ without its twin in val/ warns as an empty one does: its accuracy is not measured."
    shutil.rmtree(data / 'val' / 'bee')
    with pytest.warns(UserWarning, match=f"validation class folder {data / 'val' / 'bee'} is missing: accuracy on 'bee'"):
        assert check_image_folder(data) == data
