"""Checkpoint and write faults (issue 22): a CRC32 in every saved file, a full disk, a double Ctrl-C, the interrupted
state removed once the run finishes, OSError lines that name their file, notices on stdout.

Each case asserts the one line a user sees, the exit code, and that the last good file is untouched. A real tmpfs
(mounted here when running as root; else those cases are skipped) stands beside a patched writer for the full disk.
Training runs are the draft CNN on 32 px images on the CPU, except the double Ctrl-C, which needs a checkpoint big
enough (xresnet18, 179 MB) that the second signal lands while it is written.
"""
import argparse, errno, glob, hashlib, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

import exp.nb_10a as nb10a
from exp.nb_10a import (DamagedFileError, cli_call, file_lock, interrupted_path, predict_cli, read_checkpoint,
                        resume_train, torch_load, train, train_cli)
from conftest import Raiser, leftovers, make_image_folder

pytestmark = pytest.mark.usefixtures('isolated')
ROOT = Path(__file__).resolve().parents[1]
KW = dict(size=32, bs=4, arch='draft-cnn', tricks='none', device='cpu', workers=0, limit=4, progress=False)
NO_SPACE = "exp-train: error: No space left on device while writing {}: nothing was written. Free some disk space, then run again"


def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "2 classes x (4 train, 2 val) JPEGs of 32 px."
    return make_image_folder(tmp_path_factory.mktemp('tiny'), ('ant', 'bee'), 4, 2, (32, 32))


def stopped(tiny, out, exc=RuntimeError):
    "A 2-epoch run that `exc` stops at the start of epoch 2: its checkpoint.pt holds epoch 1."
    with pytest.raises(exc): train(tiny, out=out, epochs=2, cbs=[Raiser(exc, 'begin_batch', epoch=1, it=0)], **KW)
    assert read_checkpoint(out / 'checkpoint.pt')['epoch'] == 1
    return out


def resume_cli(out, capsys):
    "`exp-train --resume out`, which must fail: (exit code, its stderr)."
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: train_cli(['--resume', str(out), '--no-progress'])
    return e.value.code, capsys.readouterr().err


@pytest.fixture
def tmpfs(tmp_path):
    "mount(size, ro=False) -> a fresh tmpfs folder of `size` (e.g. '3m'); skips unless this process may mount."
    mounted = []
    def mount(size, ro=False):
        d = tmp_path / f'disk{len(mounted)}'
        d.mkdir()
        opts = f'size={size}' + (',ro' if ro else '')
        if subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(d)], capture_output=True).returncode:
            pytest.skip('cannot mount a tmpfs here (needs root)')
        mounted.append(d)
        return d
    yield mount
    for d in mounted: subprocess.run(['umount', '-l', str(d)])


# ======================================================================================= a CRC32 in every saved file
def damage(p, how):
    "Flip one bit in the middle of file `p` ('flip'), or cut its second half off ('cut')."
    b = bytearray(Path(p).read_bytes())
    if how == 'flip': b[len(b) // 2] ^= 0x10
    Path(p).write_bytes(b if how == 'flip' else b[:len(b) // 2])


@pytest.mark.parametrize('how, why', [('flip', 'is damaged (its bytes do not match the CRC32'), ('cut', 'could not be read')])
def test_damaged_checkpoint_is_one_line(how, why, tiny, tmp_path, capsys):
    "--resume of a run whose checkpoint.pt was damaged on disk: exit 1, one line naming the file and the fix; nothing trained."
    out = stopped(tiny, tmp_path / 'run')
    ck = out / 'checkpoint.pt'
    damage(ck, how)
    before = sha(ck)
    code, err = resume_cli(out, capsys)
    assert code == 1 and 'Traceback' not in err and err.count('\n') == 1, err
    assert err.startswith(f"exp-train: error: {ck} {why}") and 'restore it from a copy, or start the run again' in err
    assert sha(ck) == before and not (out / 'model.pt').exists()


@pytest.fixture(scope='module')
def finished(tiny, tmp_path_factory):
    "A finished 1-epoch run."
    return train(tiny, out=tmp_path_factory.mktemp('runs') / 'done', epochs=1, **KW)


def test_model_pt_carries_a_crc32(finished, tmp_path):
    "model.pt is written by atomic_save: torch_load finds one flipped bit that torch.load reads without a word."
    m = tmp_path / 'model.pt'
    m.write_bytes((finished / 'model.pt').read_bytes())
    assert torch_load(m)['vocab'] == ['ant', 'bee']
    damage(m, 'flip')
    with pytest.raises(DamagedFileError, match='model.pt is damaged'): torch_load(m)


def test_predict_refuses_damaged_model_pt(finished, tiny, tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'model.pt').write_bytes((finished / 'model.pt').read_bytes())
    damage(run / 'model.pt', 'flip')
    with pytest.raises(SystemExit) as e: predict_cli([str(run), str(tiny / 'val' / 'ant' / '0.jpg')])
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'model.pt is damaged' in err and len(err.splitlines()) == 1


# ======================================================================================= a full disk
class FullAfter:
    "A file that takes `n` more bytes, then fails like a full disk."
    def __init__(self, f, n): self.f, self.n = f, n
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
    def fileno(self): return self.f.fileno()
    def flush(self): self.f.flush()
    def write(self, b):
        b = memoryview(b).cast('B')
        if len(b) > self.n:
            self.f.write(b[:self.n])
            self.n = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.n -= len(b)
        return self.f.write(b)


def test_full_disk_writing_checkpoint_patched(tiny, tmp_path, capsys, monkeypatch):
    "Every file may take 100 kB: the metrics fit, the 1.9 MB checkpoint does not. One line, exit 1, checkpoint.pt kept."
    out = stopped(tiny, tmp_path / 'run')
    before, real = sha(out / 'checkpoint.pt'), os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, *a, **k: FullAfter(real(fd, *a, **k), 100_000))
    code, err = resume_cli(out, capsys)
    assert code == 1 and 'Traceback' not in err and err.splitlines()[-1] == NO_SPACE.format(out / 'checkpoint.pt')
    assert sha(out / 'checkpoint.pt') == before and leftovers(out) == []


def test_full_disk_writing_checkpoint_tmpfs(tiny, tmp_path, tmpfs, capsys):
    "The same on a real 3 MB tmpfs: the run's epoch 1 (a 1.9 MB checkpoint) fits, a second checkpoint beside it does not."
    out = stopped(tiny, tmpfs('3m') / 'run')
    before = sha(out / 'checkpoint.pt')
    code, err = resume_cli(out, capsys)
    assert code == 1 and 'Traceback' not in err and err.splitlines()[-1] == NO_SPACE.format(out / 'checkpoint.pt')
    assert sha(out / 'checkpoint.pt') == before and leftovers(out) == []
    assert read_checkpoint(out / 'checkpoint.pt')['epoch'] == 1


# ======================================================================================= Ctrl-C
def test_double_ctrl_c_keeps_the_checkpoints(tmp_path):
    """exp-train in a subprocess: a first SIGINT during epoch 2, a second while checkpoint.interrupted.pt is written
    (typically 0.05-0.3 s later). Exit 130 with one line; checkpoint.pt as it was, the interrupted state whole."""
    data = make_image_folder(tmp_path / 'data', ('a', 'b', 'c'), 20, 10, (32, 32))
    out = tmp_path / 'run'
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'exp.nb_10a', '--data', str(data), '--out', str(out), '--size', '32', '--bs', '8',
           '--epochs', '2', '--device', 'cpu', '--workers', '0', '--no-progress']
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (out / 'checkpoint.pt').exists() and p.poll() is None and time.time() - t0 < 300: time.sleep(0.01)
        assert p.poll() is None, p.communicate()[1][-3000:]
        before = sha(out / 'checkpoint.pt')                                 # epoch 1's; epoch 2 is running
        p.send_signal(signal.SIGINT)
        def written():                                                      # the interrupted state, 1 MB in
            temps = glob.glob(str(out / '.checkpoint.interrupted.pt.*.tmp'))
            return sum(os.stat(f).st_size for f in temps if os.path.exists(f)) > 1 << 20
        t0 = time.time()
        while not written() and p.poll() is None and time.time() - t0 < 120: time.sleep(0.001)
        assert p.poll() is None, 'the run ended before its interrupted checkpoint was being written'
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130 and 'Traceback' not in err and err.splitlines()[-1] == 'exp-train: interrupted', err
    assert sha(out / 'checkpoint.pt') == before and leftovers(out) == []
    assert read_checkpoint(interrupted_path(out / 'checkpoint.pt'))['interrupted']['epoch'] == 1


def test_interrupted_checkpoint_removed_once_the_run_finishes(tiny, tmp_path):
    out = stopped(tiny, tmp_path / 'run', KeyboardInterrupt)
    assert interrupted_path(out / 'checkpoint.pt').is_file()
    assert resume_train(out, device='cpu', workers=0, progress=False) == out
    assert not interrupted_path(out / 'checkpoint.pt').exists() and read_checkpoint(out / 'checkpoint.pt')['epoch'] == 2


# ======================================================================================= messages
def test_oserror_line_names_its_file(tmp_path, tmpfs, capsys):
    "A lock file in a folder one cannot write (filelock's OSError carries the path in `filename`): the line names it."
    if os.geteuid() == 0: folder = tmpfs('1m', ro=True)                     # root writes through chmod
    else:
        folder = tmp_path / 'ro'
        folder.mkdir(mode=0o555)
    lock = folder / '.x.lock'
    with pytest.raises(SystemExit) as e: cli_call(argparse.ArgumentParser(prog='t'), lambda: file_lock(lock).acquire())
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith('t: error: ') and err.endswith(f": {lock}\n") and err.count('\n') == 1


def test_failed_run_notice_goes_to_stdout(tiny, tmp_path, capsys):
    "What a failed run's folder keeps is a notice, not the error: stdout."
    out = stopped(tiny, tmp_path / 'run')
    cap = capsys.readouterr()
    note = f"the run folder {out} keeps checkpoint.pt (1 finished epoch(s)): resume the run from it"
    assert note in cap.out and note not in cap.err
