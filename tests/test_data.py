"""Data access (exp.nb_00a): downloads, mirror, checksums, resume, safe extraction, Fashion-MNIST parsing.

Everything runs against an HTTP server on 127.0.0.1 (ephemeral port, in a thread) or a closed local port; no test
touches any other address. The real files come from the shared data folder beside the checkout (../shared/data).
Also the pieces of nb_00a that the rest of the library shares: the atomic writer, the file lock, ArgError.
"""
import errno, gzip, hashlib, os, pickle, re, signal, struct, subprocess, sys, tarfile, threading, time
from pathlib import Path

import numpy as np
import pytest
import torch

import exp.nb_00a as nb00a
import exp.nb_00b as nb00b
from exp.nb_00a import (URLs, KNOWN_SHA256, ArchiveError, ArgError, ChecksumError, DownloadError, atomic_save, atomic_write,
                        data_mirror, default_data_path, download_data, file_lock, file_sha256, untar_data, url_fname)
from exp.nb_00b import load_fashion_mnist, read_idx

from conftest import SHARED, FM, closed_port, leftovers, make_tar
needs_shared = pytest.mark.skipif(not FM.is_dir(), reason=f'shared data folder {SHARED} not present')
LABELS = 't10k-labels-idx1-ubyte.gz'   # a small real file (5 kB) with a known sha256


# ---------------------------------------------------------------- fixtures (conftest.py): isolated, server; helpers
pytestmark = pytest.mark.usefixtures('isolated')

def sha(b): return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- folders
def test_data_folder_env(tmp_path, monkeypatch):
    assert default_data_path() == tmp_path / 'data' and (tmp_path / 'data').is_dir()
    monkeypatch.delenv('EXP_DATA')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert default_data_path() == tmp_path / 'home' / 'exp-data'
    assert data_mirror() is None
    monkeypatch.setenv('EXP_DATA_MIRROR', str(tmp_path / 'missing'))
    with pytest.raises(FileNotFoundError, match='EXP_DATA_MIRROR'): data_mirror()


# ---------------------------------------------------------------- downloads
@needs_shared
def test_download_real_file_verified(server, tmp_path):
    base, _, h = server
    p = download_data(base + 'fashion-mnist/' + LABELS)
    assert p == tmp_path / 'data' / 'fashion-mnist' / LABELS
    assert file_sha256(p) == KNOWN_SHA256[LABELS] == file_sha256(FM / LABELS)
    assert leftovers(p.parent) == []
    n = len(h.log)
    assert download_data(base + 'fashion-mnist/' + LABELS) == p and len(h.log) == n   # cached: no new request


def test_download_and_extract_small_archive(server, tmp_path):
    base, root, h = server
    make_tar(root / 'toy.tgz', [('toy/train/a.txt', b'A'), ('toy/val/b.txt', b'B'), ('toy/train/l', '->a.txt')])
    d = untar_data(base + 'toy.tgz', sha256=file_sha256(root / 'toy.tgz'))
    assert d == tmp_path / 'data' / 'toy'
    assert (d / 'train' / 'a.txt').read_bytes() == b'A' and (d / 'val' / 'b.txt').read_bytes() == b'B'
    assert (d / 'train' / 'l').read_bytes() == b'A'
    assert leftovers(d.parent) == []
    assert untar_data(base + 'toy.tgz') == d and len(h.log) == 1          # stamp matches: no download, no re-extract
    make_tar(root / 'two.tar.gz', [('two/a.txt', b'A')])
    assert untar_data(base + 'two.tar.gz') == tmp_path / 'data' / 'two'   # the whole '.tar.gz' goes from the name


def test_wrong_checksum(server, tmp_path):
    base, root, _ = server
    (root / 'f.bin').write_bytes(b'payload' * 1000)
    with pytest.raises(ChecksumError, match=r'f\.bin.*expected 0{64}'):
        download_data(base + 'f.bin', sha256='0' * 64)
    assert not (tmp_path / 'data' / 'f.bin').exists() and leftovers(tmp_path / 'data') == []


@needs_shared
def test_known_checksum_mismatch(server, tmp_path):
    "A file named like an official Fashion-MNIST file but with other bytes is rejected by KNOWN_SHA256."
    base, root, _ = server
    (root / 'fashion-mnist' / LABELS).unlink()
    (root / 'fashion-mnist' / LABELS).write_bytes(b'tampered')
    with pytest.raises(ChecksumError, match=KNOWN_SHA256[LABELS]):
        download_data(base + 'fashion-mnist/' + LABELS)
    assert not (tmp_path / 'data' / 'fashion-mnist' / LABELS).exists()
    assert leftovers(tmp_path / 'data' / 'fashion-mnist') == []


def test_truncated_transfer_then_resume(server, tmp_path):
    base, root, h = server
    data = os.urandom(200_000)
    (root / 'big.bin').write_bytes(data)
    h.truncate.add('big.bin')
    dest, part = tmp_path / 'data' / 'big.bin', tmp_path / 'data' / 'big.bin.part'
    with pytest.raises(DownloadError, match=r'stopped at 100000 of 200000 bytes.*big\.bin\.part'):
        download_data(base + 'big.bin', sha256=sha(data))
    assert not dest.exists() and part.stat().st_size == 100_000   # never renamed, never looks complete
    h.truncate.clear()
    assert download_data(base + 'big.bin', sha256=sha(data)).read_bytes() == data
    assert h.log[-1] == ('big.bin', 'bytes=100000-') and not part.exists()


def test_resume_with_range(server, tmp_path):
    base, root, h = server
    data = os.urandom(150_000)
    (root / 'r.bin').write_bytes(data)
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'r.bin.part').write_bytes(data[:70_000])
    assert download_data(base + 'r.bin', sha256=sha(data)).read_bytes() == data
    assert h.log == [('r.bin', 'bytes=70000-')]


def test_server_without_range_restarts_cleanly(server, tmp_path):
    base, root, h = server
    data = os.urandom(50_000)
    (root / 'n.bin').write_bytes(data)
    h.ignore_range.add('n.bin')
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'n.bin.part').write_bytes(b'garbage that is not a prefix')
    assert download_data(base + 'n.bin').read_bytes() == data           # 200 answer: rewritten from byte 0
    assert h.log == [('n.bin', 'bytes=28-')]


def test_http_error_is_clear(server):
    base, _, _ = server
    with pytest.raises(DownloadError, match='404') as e: download_data(base + 'nothing-here.tgz')
    assert 'To work offline, place the file nothing-here.tgz' in str(e.value)   # what to do, not just the status


def test_cut_transfer_without_length_is_not_accepted(server, tmp_path):
    "No Content-Length and no checksum: an archive cut short is caught by reading it through, and nothing is kept."
    base, root, h = server
    make_tar(root / 'big.tgz', [(f'big/f{i}.bin', os.urandom(20000)) for i in range(10)])
    h.no_length, h.truncate = {'big.tgz'}, {'big.tgz'}
    with pytest.raises(DownloadError, match='big.tgz arrived incomplete or damaged'): download_data(base + 'big.tgz')
    assert not (tmp_path / 'data' / 'big.tgz').exists() and leftovers(tmp_path / 'data') == []
    h.truncate = set()                                                    # whole, still without a length: accepted
    assert file_sha256(download_data(base + 'big.tgz')) == file_sha256(root / 'big.tgz')


def test_two_downloads_of_one_file_at_once(server, tmp_path, monkeypatch):
    "Two downloads of the same file overlap: the second waits for the first and reuses its file (one request, intact)."
    base, root, h = server
    (root / 'f.bin').write_bytes(os.urandom(300_000))
    real = nb00a.http_fetch
    def slow_fetch(*a, **k): time.sleep(0.5); return real(*a, **k)       # keep the first one busy while the second starts
    monkeypatch.setattr(nb00a, 'http_fetch', slow_fetch)
    res = []
    ts = [threading.Thread(target=lambda: res.append(download_data(base + 'f.bin', sha256=file_sha256(root / 'f.bin'))))
          for _ in range(2)]
    for t in ts: t.start(); time.sleep(0.1)
    for t in ts: t.join()
    assert len(res) == 2 and res[0] == res[1] and file_sha256(res[0]) == file_sha256(root / 'f.bin')
    assert [n for n, _ in h.log] == ['f.bin'] and leftovers(tmp_path / 'data') == []


def test_offline_without_mirror_names_file_and_folder(tmp_path):
    url = f'http://127.0.0.1:{closed_port()}/fashion-mnist/{LABELS}'
    with pytest.raises(DownloadError) as e: download_data(url, timeout=5)
    msg = str(e.value)
    assert str(tmp_path / 'data' / 'fashion-mnist' / LABELS) in msg
    assert f'<mirror>/fashion-mnist/{LABELS}' in msg and 'EXP_DATA_MIRROR' in msg
    assert leftovers(tmp_path / 'data' / 'fashion-mnist') == []


@needs_shared
def test_mirror_first(tmp_path, monkeypatch):
    monkeypatch.setenv('EXP_DATA_MIRROR', str(SHARED))
    url = f'http://127.0.0.1:{closed_port()}/fashion-mnist/{LABELS}'   # the network is never needed
    p = download_data(url)
    assert p == tmp_path / 'data' / 'fashion-mnist' / LABELS and file_sha256(p) == KNOWN_SHA256[LABELS]


def test_mirror_bad_copy_and_offline_message(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'
    (mirror / 'fashion-mnist').mkdir(parents=True)
    (mirror / 'fashion-mnist' / LABELS).write_bytes(b'not the real file')
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    url = f'http://127.0.0.1:{closed_port()}/fashion-mnist/{LABELS}'
    with pytest.raises(ChecksumError, match=re.escape(str(mirror / 'fashion-mnist' / LABELS))): download_data(url)
    assert leftovers(tmp_path / 'data' / 'fashion-mnist') == []
    url2 = f'http://127.0.0.1:{closed_port()}/other.tgz'                # mirror set, file absent: say where to put it
    with pytest.raises(DownloadError, match=re.escape(str(mirror / 'other.tgz'))): download_data(url2, timeout=5)


# ---------------------------------------------------------------- extraction
BAD_MEMBERS = {
    'dotdot': ([('pkg/ok.txt', b'ok'), ('pkg/../../escape.txt', b'evil')], "'..'"),
    'absolute': ([('pkg/ok.txt', b'ok'), ('/tmp/exp-abs-escape.txt', b'evil')], 'absolute path'),
    'symlink_out': ([('pkg/ok.txt', b'ok'), ('pkg/up', '->../../..'), ('pkg/up/escape.txt', b'evil')], 'points outside'),
    'symlink_abs': ([('pkg/etc', '->/etc')], 'link to absolute path'),
    'hardlink_out': ([('pkg/h', '=>../outside.txt')], 'points outside'),
    'device': ([('pkg/ok.txt', b'ok'), ('pkg/dev0', 'dev')], 'device'),
    'symlink_chain': ([('pkg/ok.txt', b'ok'), ('pkg/l2', '->.'), ('pkg/l1', '->l2/..'), ('pkg/l1/escape.txt', b'evil')],
                      'goes through another link'),           # each link alone looks inside: together they climb out
    'through_link': ([('pkg/d', '->sub'), ('pkg/sub/a.txt', b'a'), ('pkg/d/b.txt', b'b')], 'its path goes through a link'),
    'dot_slash_chain': ([('./pkg/ok.txt', b'ok'), ('./pkg/l2', '->.'), ('./pkg/l1', '->l2/..'), ('./pkg/l1/escape.txt', b'evil')],
                        'goes through another link'),                 # './' names, as `tar czf x.tgz .` writes them
}


@pytest.mark.parametrize('case', sorted(BAD_MEMBERS))
def test_unsafe_archive_rejected(case, tmp_path, monkeypatch):
    members, why = BAD_MEMBERS[case]
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    make_tar(mirror / 'pkg.tgz', members)
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    with pytest.raises(ArchiveError, match=re.escape(why)):
        untar_data(f'http://127.0.0.1:{closed_port()}/pkg.tgz')
    data = tmp_path / 'data'
    assert not (data / 'pkg').exists() and leftovers(data) == []          # nothing half-extracted
    assert not (tmp_path / 'escape.txt').exists() and not Path('/tmp/exp-abs-escape.txt').exists()


def test_symlink_chain_rejected_without_data_filter(tmp_path, monkeypatch):
    "Pythons before 3.10.12 / 3.11.4 have no tarfile data filter: our own checks alone must stop a chain of links."
    monkeypatch.delattr(tarfile, 'data_filter', raising=False)
    for case in ('symlink_chain', 'dot_slash_chain'):
        (tmp_path / case).mkdir()
        monkeypatch.setenv('EXP_DATA', str(tmp_path / case / 'data'))
        test_unsafe_archive_rejected(case, tmp_path / case, monkeypatch)


def test_untar_never_deletes_a_folder_it_did_not_make(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    make_tar(mirror / 'v.tgz', [('v/a.txt', b'A')])
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    url = f'http://127.0.0.1:{closed_port()}/v.tgz'
    mine = tmp_path / 'mine'; mine.mkdir(); (mine / 'labels.csv').write_text('my own work')
    for force in (False, True):
        with pytest.raises(FileExistsError, match='was not extracted by untar_data'): untar_data(url, dest=mine, force=force)
    assert [p.name for p in mine.iterdir()] == ['labels.csv']               # untouched
    other = untar_data(url, dest=tmp_path / 'other')                        # any dest: the archive's top folder is the content
    assert (other / 'a.txt').read_bytes() == b'A' and untar_data(url) == tmp_path / 'data' / 'v'
    (tmp_path / 'empty').mkdir(); assert (untar_data(url, dest=tmp_path / 'empty') / 'a.txt').is_file()   # an empty folder is fine


def test_two_extractions_at_once(tmp_path, monkeypatch):
    "Two untar_data calls on one archive overlap: they take turns, and both get the same complete folder."
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    make_tar(mirror / 'w.tgz', [(f'w/f{i}.bin', os.urandom(50_000)) for i in range(40)])
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    real = nb00a.safe_extract
    def slow(*a): time.sleep(0.3); return real(*a)
    monkeypatch.setattr(nb00a, 'safe_extract', slow)
    res, errs = [], []
    def job():
        try: res.append(untar_data(f'http://127.0.0.1:{closed_port()}/w.tgz'))
        except Exception as e: errs.append(e)
    ts = [threading.Thread(target=job) for _ in range(2)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert errs == [] and res[0] == res[1] and len(list(res[0].glob('f*.bin'))) == 40
    assert leftovers(tmp_path / 'data') == []


def test_full_disk_while_extracting_blames_the_disk(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    make_tar(mirror / 'v.tgz', [('v/a.txt', b'A')])
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(tarfile.TarFile, 'extract', full)      # safe_extract unpacks member by member
    with pytest.raises(OSError, match='cannot extract v.tgz into .*No space left on device. The archive is fine') as e:
        untar_data(f'http://127.0.0.1:{closed_port()}/v.tgz')
    assert not isinstance(e.value, ArchiveError) and (tmp_path / 'data' / 'v.tgz').is_file()   # the download is kept
    assert not (tmp_path / 'data' / 'v').exists() and leftovers(tmp_path / 'data') == []


def test_corrupt_archive(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    good = make_tar(tmp_path / 'good.tgz', [(f'c/f{i}.txt', os.urandom(5000)) for i in range(20)]).read_bytes()
    (mirror / 'c.tgz').write_bytes(good[:len(good) // 2])                  # truncated gzip stream
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    with pytest.raises(ArchiveError, match=r'c\.tgz is not a readable archive'):
        untar_data(f'http://127.0.0.1:{closed_port()}/c.tgz')
    assert not (tmp_path / 'data' / 'c').exists() and leftovers(tmp_path / 'data') == []
    (mirror / 'c.tgz').write_bytes(b'plain text, not an archive')
    with pytest.raises(ArchiveError, match='not a readable archive'):
        untar_data(f'http://127.0.0.1:{closed_port()}/c.tgz', force=True)
    assert not (tmp_path / 'data' / 'c').exists() and leftovers(tmp_path / 'data') == []


def test_reextract_when_archive_changes(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    make_tar(mirror / 'v.tgz', [('v/a.txt', b'version 1'), ('v/only_v1.txt', b'x')])
    monkeypatch.setenv('EXP_DATA_MIRROR', str(mirror))
    url = f'http://127.0.0.1:{closed_port()}/v.tgz'
    d = untar_data(url)
    assert (d / 'a.txt').read_text() == 'version 1'
    stamp = nb00a._stamp(tmp_path / 'data' / 'v.tgz')
    assert nb00a._has_stamp(d, tmp_path / 'data' / 'v.tgz')
    make_tar(tmp_path / 'data' / 'v.tgz', [('v/a.txt', b'version 2')])   # the archive in the data folder changes
    d2 = untar_data(url)
    assert d2 == d and (d / 'a.txt').read_text() == 'version 2' and not (d / 'only_v1.txt').exists()
    assert nb00a._stamp(tmp_path / 'data' / 'v.tgz') != stamp and leftovers(tmp_path / 'data') == []
    killed = tmp_path / 'data' / '.v.k1ll3d00.tmp'
    (killed / 'old').mkdir(parents=True)                                  # a swap killed half-way, long ago
    os.utime(killed, (time.time() - 7200,) * 2)
    make_tar(tmp_path / 'data' / 'v.tgz', [('v/a.txt', b'version 3')])
    assert (untar_data(url) / 'a.txt').read_text() == 'version 3' and leftovers(tmp_path / 'data') == []
    (d / 'a.txt').write_text('edited by hand')                           # unchanged archive: folder is kept as is
    assert untar_data(url) == d and (d / 'a.txt').read_text() == 'edited by hand'


# ---------------------------------------------------------------- Fashion-MNIST
@needs_shared
def test_load_fashion_mnist_from_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv('EXP_DATA_MIRROR', str(SHARED))
    xt, yt, xv, yv = load_fashion_mnist()
    assert [tuple(t.shape) for t in (xt, yt, xv, yv)] == [(60000, 784), (60000,), (10000, 784), (10000,)]
    assert xt.dtype == xv.dtype == torch.float32 and yt.dtype == yv.dtype == torch.int64
    assert 0 <= float(xt.min()) and float(xt.max()) == 1.0 and 0.2 < float(xt.mean()) < 0.4
    assert torch.bincount(yt).tolist() == [6000] * 10 and torch.bincount(yv).tolist() == [1000] * 10
    assert not (tmp_path / 'data' / 'fashion-mnist').exists()            # read in place, nothing copied


def idx(arr):
    "Encode a uint8 array as IDX bytes."
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f'>{arr.ndim}I', *arr.shape) + arr.tobytes()


def write_fmnist(folder, n=(6, 4), images=None):
    "A tiny, valid Fashion-MNIST lookalike in `folder`; `images` overrides the train-images bytes."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, k in zip(('train', 't10k'), n):
        x = rng.integers(0, 256, (k, 28, 28), dtype=np.uint8)
        (folder / f'{split}-images-idx3-ubyte.gz').write_bytes(gzip.compress(idx(x)))
        (folder / f'{split}-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx(np.arange(k, dtype=np.uint8) % 10)))
    if images is not None: (folder / 'train-images-idx3-ubyte.gz').write_bytes(images)
    return folder


def test_load_fashion_mnist_from_folder(tmp_path):
    xt, yt, xv, yv = load_fashion_mnist(write_fmnist(tmp_path / 'fm'))
    assert xt.shape == (6, 784) and xv.shape == (4, 784) and yt.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ArgError, match='not a folder') as e: load_fashion_mnist(tmp_path / 'nope')   # a bad argument value
    assert e.value.arg == 'path' and e.value.value == str(tmp_path / 'nope')


@pytest.mark.parametrize('kind, match', [('truncated', 'truncated'), ('magic', 'bad magic number'),
                                         ('gzip', 'cannot read or decompress'), ('shape', 'expected uint8 images')])
def test_bad_idx_file(kind, match, tmp_path):
    x = np.zeros((6, 28, 28), np.uint8)
    raw = {'truncated': gzip.compress(idx(x)[:-10]), 'magic': gzip.compress(b'\x12\x34' + idx(x)[2:]),
           'gzip': gzip.compress(idx(x))[:-12], 'shape': gzip.compress(idx(np.zeros((6, 27, 27), np.uint8)))}[kind]
    folder = write_fmnist(tmp_path / 'fm', images=raw)
    with pytest.raises(ValueError, match=match) as e: load_fashion_mnist(folder)
    assert 'train-images-idx3-ubyte.gz' in str(e.value)


def test_labels_must_match_images(tmp_path):
    folder = write_fmnist(tmp_path / 'fm')
    (folder / 'train-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx(np.arange(5, dtype=np.uint8))))
    with pytest.raises(ValueError, match='train-labels-idx1-ubyte.gz: expected 6 labels'): load_fashion_mnist(folder)


def test_read_idx_raw_and_types(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / 'a.idx').write_bytes(idx(a))
    np.testing.assert_array_equal(read_idx(tmp_path / 'a.idx'), a)
    f = np.array([1.5, -2.0], dtype='>f4')
    (tmp_path / 'f.idx').write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack('>I', 2) + f.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / 'f.idx'), f)


@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist').is_dir(), reason='Debian dataset-fashion-mnist not installed')
def test_debian_package_location(monkeypatch):
    monkeypatch.setattr(nb00b, 'FMNIST_SYSTEM_PATH', Path('/usr/share/datasets/fashion-mnist'))
    xt, yt, xv, yv = load_fashion_mnist()
    assert xt.shape == (60000, 784) and xv.shape == (10000, 784)


def test_debian_location_is_consulted(tmp_path, monkeypatch):
    "With no path and no mirror, the system folder is used before any download (uncompressed files work too)."
    folder = write_fmnist(tmp_path / 'sys')
    for f in list(folder.iterdir()): (folder / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes())); f.unlink()
    monkeypatch.setattr(nb00b, 'FMNIST_SYSTEM_PATH', folder)
    assert load_fashion_mnist()[0].shape == (6, 784)


def test_contract_names_and_progress_bar(server, capsys):
    "The names later chapters use exist, and a visible progress bar does not disturb a download."
    assert nb00b.datasets.untar_data is untar_data and nb00b.datasets.URLs.IMAGENETTE_160.endswith('/imagenette2-160.tgz')
    assert set(URLs.FASHION_MNIST_FILES) == set(KNOWN_SHA256)              # no trusted sum for Imagenette
    assert len(nb00b.FMNIST_CLASSES) == 10
    base, root, _ = server
    data = os.urandom(300_000)
    (root / 'p.bin').write_bytes(data)
    assert download_data(base + 'p.bin', progress=True).read_bytes() == data


# ---------------------------------------------------------------- shared pieces: ArgError, atomic writer, file lock
def test_arg_error_names_the_argument():
    with pytest.raises(ArgError) as e: url_fname('https://example.org/')
    assert (e.value.arg, e.value.value) == ('url', 'https://example.org/') and 'file name' in e.value.why
    assert str(e.value) == f"url='https://example.org/': {e.value.why}" and isinstance(e.value, ValueError)
    again = pickle.loads(pickle.dumps(e.value))                          # crosses process boundaries intact
    assert type(again) is ArgError and (again.arg, again.value, again.why) == (e.value.arg, e.value.value, e.value.why)


def test_atomic_write_and_save(tmp_path):
    p = atomic_write(tmp_path / 'sub' / 'a.txt', 'text')                  # folders are created
    assert p.read_text() == 'text' and atomic_write(p, b'\x00\x01').read_bytes() == b'\x00\x01'
    umask = os.umask(0o022); os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask                   # normal permissions, not mkstemp's 0o600
    atomic_save({'w': torch.arange(4)}, tmp_path / 'm.pt')
    assert torch.equal(torch.load(tmp_path / 'm.pt', weights_only=True)['w'], torch.arange(4))
    assert sorted(f.name for f in tmp_path.rglob('*')) == ['a.txt', 'm.pt', 'sub']   # no temp file left


class HalfThenFull:
    "A file whose write stores half the bytes, then fails like a full disk."
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
    def write(self, b):
        self.f.write(bytes(b[:len(b) // 2])); self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize('writer', ['atomic_write', 'atomic_save'])
def test_atomic_writers_on_a_full_disk_keep_the_old_file(writer, tmp_path, monkeypatch):
    p = tmp_path / 'f.bin'
    p.write_bytes(b'old and complete')
    real = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, *a, **k: HalfThenFull(real(fd, *a, **k)))
    with pytest.raises(OSError) as e:
        if writer == 'atomic_write': atomic_write(p, b'x' * 10_000)
        else: atomic_save({'x': torch.zeros(1000)}, p)
    assert e.value.errno == errno.ENOSPC and str(p) in str(e.value) and 'Free some disk space' in str(e.value)
    assert p.read_bytes() == b'old and complete' and os.listdir(tmp_path) == ['f.bin']   # old file intact, temp removed


def test_atomic_write_error_for_an_unwritable_place(tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(OSError) as e: atomic_write(tmp_path / 'file' / 'a.txt', 'text')   # a file where a folder should be
    assert str(tmp_path / 'file' / 'a.txt') in str(e.value) and leftovers(tmp_path) == []


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from exp.nb_00a import file_lock
lock, log, name, hold = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
with file_lock(lock):
    with open(log, 'a') as f: f.write(name + ' in\\n')
    time.sleep(hold)
    with open(log, 'a') as f: f.write(name + ' out\\n')
"""


def lock_holder(tmp_path, name, hold):
    "A separate Python process that takes the lock tmp_path/x.lock, logs 'name in', holds it `hold` s, logs 'name out'."
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, '-c', LOCK_HOLDER, str(tmp_path / 'x.lock'), str(tmp_path / 'log'), name, str(hold)],
                            env=env)


def wait_for_line(log, line, proc, limit=60):
    t0 = time.time()
    while not (log.exists() and line in log.read_text().splitlines()):
        assert proc.poll() is None and time.time() - t0 < limit, f'{line!r} never appeared in {log}'
        time.sleep(0.05)


def test_file_lock_processes_take_turns(tmp_path):
    "Two processes on one lock: the second one waits until the first is done; meanwhile a third taker times out."
    a = lock_holder(tmp_path, 'a', 2.0)
    try:
        wait_for_line(tmp_path / 'log', 'a in', a)
        b = lock_holder(tmp_path, 'b', 0)
        with pytest.raises(TimeoutError):                                    # really exclusive, also for this process
            with file_lock(tmp_path / 'x.lock', timeout=0.2): pass
        assert a.wait(60) == 0 and b.wait(60) == 0
    finally: a.kill(); a.wait()
    assert (tmp_path / 'log').read_text().splitlines() == ['a in', 'a out', 'b in', 'b out']
    with file_lock(tmp_path / 'x.lock', timeout=1) as lk: assert lk.is_locked   # free again


def test_file_lock_threads_take_turns(tmp_path):
    order = []
    def hold(name, wait):
        with file_lock(tmp_path / 'x.lock'): order.append(name + ' in'); time.sleep(wait); order.append(name + ' out')
    t = threading.Thread(target=hold, args=('a', 0.4)); t.start(); time.sleep(0.1)
    hold('b', 0); t.join()
    assert order == ['a in', 'a out', 'b in', 'b out']


def test_file_lock_freed_when_holder_is_killed(tmp_path):
    "A process killed while it holds the lock does not block the next one (the OS drops a flock with its process)."
    a = lock_holder(tmp_path, 'a', 600)
    try:
        wait_for_line(tmp_path / 'log', 'a in', a)
        with pytest.raises(TimeoutError): file_lock(tmp_path / 'x.lock', timeout=0.2).acquire()
        a.send_signal(signal.SIGKILL); a.wait(30)
    finally: a.kill(); a.wait()
    with file_lock(tmp_path / 'x.lock', timeout=5): pass


def test_extraction_progress_lines(tmp_path, capsys):
    "Where no bar can be seen, extraction prints one line as it starts and one as it ends (a bar in a terminal or notebook)."
    import io, re, tarfile
    arc = tmp_path / 'three.tgz'
    with tarfile.open(arc, 'w:gz') as tf:
        for i in range(3):
            data = f'file {i}'.encode(); ti = tarfile.TarInfo(f'three/f{i}.txt'); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
    nb00a.safe_extract(arc, tmp_path / 'out', progress=False)
    out = capsys.readouterr().out
    assert 'extracting three.tgz: 3 items ...' in out and re.search(r'extracting three\.tgz: 3 items in [\d.]+s', out), out
    assert sorted(p.name for p in (tmp_path / 'out' / 'three').iterdir()) == ['f0.txt', 'f1.txt', 'f2.txt']
