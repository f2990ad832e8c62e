"Tests of notebook 10's multi-GPU and resume code (exp.nb_10), CPU only: DDP on gloo vs one process, atomic checkpoints, SIGKILL + resume."
import os, sys, json, time, signal, socket, subprocess, random
from pathlib import Path
import pytest, torch
from torch import nn

HERE = Path(__file__).resolve().parent
MOD = 'exp.nb_10'
import exp.nb_10 as M
PY = sys.executable
import exp
MIRROR = Path(exp.__file__).resolve().parents[2] / 'shared' / 'data'   # ../shared/data beside the repo (SPEC), if present

def sub_env(**kw):
    "Environment for the worker subprocesses: the repository importable, one thread, the shared data mirror, no torchrun vars."
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env.update(PYTHONPATH=f"{HERE.parent}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS='1', RESUME_DDP_MODULE=MOD,
               PYTHONUNBUFFERED='1', **kw)
    return env

@pytest.fixture(scope='module')
def fmnist(tmp_path_factory):
    "A 2048/512 Fashion-MNIST subset from load_fashion_mnist, saved once for the worker processes (they skip the parsing)."
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get('EXP_DATA_MIRROR') and MIRROR.is_dir(): mp.setenv('EXP_DATA_MIRROR', str(MIRROR))
        x, y, xv, yv = M.load_fashion_mnist()
    p = tmp_path_factory.mktemp('fmnist') / 'subset.pt'
    torch.save((x[:2048].clone(), y[:2048].clone(), xv[:512].clone(), yv[:512].clone()), p)
    return p

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def finish(p, what, timeout=150):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"{what} failed (rc {p.returncode}):\n{out[-4000:]}"
    return out

# ----------------------------------------------------------------------------------------------------------------------
# Worker scripts, written to files so that a subprocess (or torchrun) can run them.
COMMON = '''
import os, sys, json, time, random, importlib
import numpy as np, torch
exec(f"from {os.environ['RESUME_DDP_MODULE']} import *")
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from pathlib import Path
from torch import nn
torch.set_num_threads(1)
def subset(n_train, n_valid):
    "The first items of the Fashion-MNIST subset that the test process took from load_fashion_mnist."
    x, y, xv, yv = torch.load(os.environ['FMNIST_SUBSET'])
    return Dataset(x[:n_train], y[:n_train]), Dataset(xv[:n_valid], yv[:n_valid])
'''

DDP_SCRIPT = COMMON + '''
out = Path(sys.argv[1]); out.mkdir(exist_ok=True)
torch.manual_seed(0)
train_ds, valid_ds = subset(512, 300)          # 8 global batches of 64; 300 valid items: shards of 150 each
train_dl = DataLoader(train_ds, batch_size=64, shuffle=True)
valid_dl = DataLoader(valid_ds, batch_size=128)
data = DataBunch(train_dl, valid_dl, c_in=784, c_out=10)
model = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
learn = Learner(model, opt, F.cross_entropy, data)
info = {}
class Probe(Callback):
    order = 30
    def begin_fit(self):
        info.update(is_main=is_main_process(), n_train_batches=len(self.run.data.train_dl),
                    rank=dist.get_rank() if dist.is_initialized() else 0)
    def begin_epoch(self):                  # DDP wraps the model at the first begin_epoch (order -6, before this one)
        info['is_ddp'] = isinstance(self.run.model, DDP)
        info.setdefault('indices', []).append(list(self.run.data.train_dl.sampler))
    def begin_validate(self): info['n_valid_local'] = len(self.run.data.valid_dl.sampler)
    def after_epoch(self): info['valid_count'] = self.run.avg_stats.valid_stats.count
rows = []
cbs = [AvgStatsCallback([accuracy]), DistributedCallback(split_batch=True),
       ParamScheduler('lr', sched_cos(0.2, 0.02)), CheckpointCallback(out / 'checkpoint.pt', config={'lr': 0.2}), Probe()]
run = Runner(cbs=cbs)
run.logger = lambda *a: rows.append(a)
run.fit(2, learn)
info.update(unwrapped=not isinstance(learn.model, DDP), group_gone=not dist.is_initialized(),
            dls_restored=learn.data.train_dl is train_dl and learn.data.valid_dl is valid_dl, n_log_rows=len(rows))
# a second fit in the same processes: the group is joined again and destroyed again
run2 = Runner(cbs=[AvgStatsCallback([accuracy]), DistributedCallback(split_batch=True)])
run2.logger = lambda *a: None
run2.fit(1, Learner(m2 := nn.Sequential(nn.Linear(784, 10)), torch.optim.SGD(m2.parameters(), lr=0.1), F.cross_entropy, data))
info['refit_ok'] = not dist.is_initialized()
r = int(os.environ.get('RANK', 0))
(out / f'rank{r}.json').write_text(json.dumps(info))
if is_main_process(): torch.save({'model': model.state_dict(), 'history': run.avg_stats.history}, out / 'final.pt')
'''

RESUME_SCRIPT = COMMON + '''
torch.use_deterministic_algorithms(True)
run_dir, mode = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0); np.random.seed(0); random.seed(0)
ck = None
if mode == 'resume': cfg, ck = resume_config(run_dir)
else:
    cfg = dict(epochs=3, bs=64, lr=0.3, nh=64, n_train=2048, n_valid=512, seed=0)
    run_dir.mkdir(exist_ok=True); (run_dir / 'config.json').write_text(json.dumps(cfg))
train_ds, valid_ds = subset(cfg['n_train'], cfg['n_valid'])
g = torch.Generator().manual_seed(cfg['seed'])                 # the sampler's own generator: saved and restored
data = DataBunch(DataLoader(train_ds, batch_size=cfg['bs'], shuffle=True, generator=g, num_workers=0),
                 DataLoader(valid_ds, batch_size=2 * cfg['bs']), c_in=784, c_out=10)
model = nn.Sequential(nn.Linear(784, cfg['nh']), nn.ReLU(), nn.Dropout(0.3), nn.Linear(cfg['nh'], 10))  # dropout: RNG
opt = torch.optim.SGD(model.parameters(), lr=cfg['lr'], momentum=0.9, weight_decay=1e-4)             # momentum: opt state
epochs_seen = []
class Track(Callback):
    def begin_epoch(self): epochs_seen.append(self.run.epoch)
class Stall(Callback):
    "Stand still in the middle of epoch 1 (a checkpoint exists by then) so that the test can SIGKILL this process."
    def after_batch(self):
        if self.run.in_train and self.run.epoch == 1 and self.run.iter == 5:
            (run_dir / 'stalled').touch(); time.sleep(300)
cbs = [AvgStatsCallback([accuracy]), ParamScheduler('lr', combine_scheds([0.3, 0.7], cos_1cycle_anneal(0.05, cfg['lr'], 0.01))),
       CheckpointCallback(run_dir / CHECKPOINT_NAME, config=cfg, resume=ck), Track()] + ([Stall()] if mode == 'killme' else [])
run = Runner(cbs=cbs)
run.logger = lambda *a: None
run.fit(cfg['epochs'], Learner(model, opt, F.cross_entropy, data))
torch.save({'model': model.state_dict(), 'history': run.avg_stats.history, 'epochs_seen': epochs_seen}, run_dir / 'final.pt')
'''

SAVER_SCRIPT = '''
import os, sys, torch
exec(f"from {os.environ['RESUME_DDP_MODULE']} import atomic_save")
path, i = sys.argv[1], 0
while True:
    i += 1
    atomic_save({'i': i, 'x': torch.full((1_000_000,), float(i))}, path)   # 4 MB, so a kill often lands mid-write
'''

def write_script(tmp_path, name, text):
    p = tmp_path / name; p.write_text(text); return p

# ----------------------------------------------------------------------------------------------------------------------
# 1. distributed helpers, in process
def test_dist_env_and_is_main(monkeypatch):
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR'): monkeypatch.delenv(k, raising=False)
    assert M.dist_env() == (0, 1, 0) and M.is_main_process()
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match='torchrun'): M.dist_env()            # RANK missing
    monkeypatch.setenv('RANK', '1'); monkeypatch.setenv('LOCAL_RANK', '1'); monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    assert M.dist_env() == (1, 2, 1) and not M.is_main_process()
    monkeypatch.setenv('RANK', '2')
    with pytest.raises(ValueError, match='RANK=2'): M.dist_env()
    monkeypatch.setenv('RANK', 'x')
    with pytest.raises(ValueError, match="RANK='x'"): M.dist_env()

def test_shard_sampler_and_sync_bn():
    shards = [list(M.ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10)) and [len(M.ShardSampler(10, r, 3)) for r in range(3)] == [4, 3, 3]
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2)))
    bns = [model[1], model[2][2]]
    swaps = M.convert_sync_bn(model)
    assert len(swaps) == 2 and isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][2], nn.SyncBatchNorm)
    assert model[1].weight is bns[0].weight and model[2][2].running_mean is bns[1].running_mean   # same tensors: opt still valid
    M.revert_sync_bn(swaps)
    assert model[1] is bns[0] and model[2][2] is bns[1]

def small_learn(n=96, bs=32, seed=0, bn=False):
    g = torch.Generator().manual_seed(0)                                   # the same data whatever the seed
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    data = M.DataBunch(M.DataLoader(M.Dataset(x, y), batch_size=bs, shuffle=True), M.DataLoader(M.Dataset(x, y), batch_size=bs),
                       c_in=8, c_out=3)
    model = nn.Sequential(nn.Linear(8, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU(), nn.Linear(16, 3))
    return M.Learner(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), M.F.cross_entropy, data)

def test_distributed_callback_single_process(monkeypatch):
    "Without torchrun: no process group, no DDP; the training data comes in DistributedSampler order; all is restored."
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'): monkeypatch.delenv(k, raising=False)
    learn = small_learn(); model, tdl, vdl = learn.model, learn.data.train_dl, learn.data.valid_dl
    seen = []
    class Spy(M.Callback):
        order = 5
        def begin_epoch(self): seen.append(list(self.run.data.train_dl.sampler))
    run = M.Runner(cbs=[M.AvgStatsCallback([M.accuracy]), M.DistributedCallback(seed=7), Spy()]); run.logger = lambda *a: None
    run.fit(2, learn)
    assert learn.model is model and learn.data.train_dl is tdl and learn.data.valid_dl is vdl
    assert not M.dist.is_initialized()
    g0, g1 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)   # seed + epoch, as DistributedSampler does
    assert seen == [torch.randperm(96, generator=g0).tolist(), torch.randperm(96, generator=g1).tolist()]

def test_ddp_two_processes_match_one(tmp_path, fmnist):
    "torchrun, 2 processes on gloo, each half of every global batch == one process with the full batch (weights, metrics)."
    script = write_script(tmp_path, 'ddp_train.py', DDP_SCRIPT)
    ddp_out, one_out = tmp_path / 'ddp', tmp_path / 'one'
    cmd = [PY, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', str(script), str(ddp_out)]
    p2 = subprocess.Popen(cmd, env=sub_env(FMNIST_SUBSET=str(fmnist)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p1 = subprocess.Popen([PY, str(script), str(one_out)], env=sub_env(FMNIST_SUBSET=str(fmnist)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finish(p1, 'single-process run'); finish(p2, 'torchrun run')
    r0, r1 = [json.loads((ddp_out / f'rank{r}.json').read_text()) for r in (0, 1)]
    one = json.loads((one_out / 'rank0.json').read_text())
    assert (r0['rank'], r1['rank'], r0['is_main'], r1['is_main'], r0['is_ddp'], one['is_ddp']) == (0, 1, True, False, True, False)
    for r in (r0, r1): assert r['unwrapped'] and r['group_gone'] and r['dls_restored'] and r['refit_ok']
    assert r0['n_train_batches'] == r1['n_train_batches'] == one['n_train_batches'] == 8
    for e in range(2):   # rank r gets items r, r+2, ... of the one-process order: every global batch is split in halves
        assert r0['indices'][e] == one['indices'][e][0::2] and r1['indices'][e] == one['indices'][e][1::2]
    assert (r0['n_valid_local'], r1['n_valid_local'], r0['valid_count'], one['valid_count']) == (150, 150, 300, 300)
    assert r0['n_log_rows'] == 3 and r1['n_log_rows'] == 0        # header + 2 epochs on rank 0 only
    a, b = torch.load(ddp_out / 'final.pt'), torch.load(one_out / 'final.pt')
    assert set(os.listdir(ddp_out)) == {'rank0.json', 'rank1.json', 'final.pt', 'checkpoint.pt'}   # rank 1 wrote nothing else
    for k in b['model']: torch.testing.assert_close(a['model'][k], b['model'][k], atol=2e-5, rtol=1e-4)
    assert (a['model']['0.weight'] - torch.load(one_out / 'checkpoint.pt', weights_only=True)['model']['0.weight']).abs().max() < 1e-4
    for ha, hb in zip(a['history'], b['history']):
        for k in ('train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy'): assert abs(ha[k] - hb[k]) < 1e-5, (k, ha, hb)
    ck = M.read_checkpoint(ddp_out / 'checkpoint.pt')
    assert ck['epoch'] == 2 and len(ck['rng']) == 2 and ck['loader']['sampler_seed'] == 0   # torch.manual_seed(0) on rank 0
    for k in b['model']: torch.testing.assert_close(ck['model'][k], a['model'][k])

# ----------------------------------------------------------------------------------------------------------------------
# 2. atomic checkpoints
def test_atomic_save_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / 'c.pt'
    M.atomic_save({'v': 1}, p)
    def broken_save(obj, f): f.write(b'half a checkpoint'); raise OSError('disk full')
    monkeypatch.setattr(M.torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'): M.atomic_save({'v': 2}, p)
    monkeypatch.undo()
    assert torch.load(p, weights_only=True) == {'v': 1} and os.listdir(tmp_path) == ['c.pt']   # old file intact, no temp left

def test_atomic_save_under_sigkill(tmp_path):
    "A process re-saving a 4 MB checkpoint in a loop: read while it writes, then SIGKILL it; every read sees a whole file."
    path, script = tmp_path / 'c.pt', write_script(tmp_path, 'saver.py', SAVER_SCRIPT)
    p = subprocess.Popen([PY, str(script), str(path)], env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while not path.exists():
            assert p.poll() is None and time.time() - t0 < 60, 'saver did not start'
            time.sleep(0.05)
        seen = set()
        for _ in range(20):
            ck = torch.load(path, weights_only=True)
            assert ck['x'].shape == (1_000_000,) and bool((ck['x'] == ck['i']).all()); seen.add(ck['i'])
            time.sleep(random.uniform(0, 0.05))
    finally: p.send_signal(signal.SIGKILL); p.wait()
    ck = torch.load(path, weights_only=True)
    assert bool((ck['x'] == ck['i']).all()) and len(seen) > 1, seen
    M.remove_stale_temps(path)
    assert os.listdir(tmp_path) == sorted(['c.pt', 'saver.py']) or set(os.listdir(tmp_path)) == {'c.pt', 'saver.py'}

# ----------------------------------------------------------------------------------------------------------------------
# 3. checkpoint contents, load errors, Ctrl-C, resume checks
def fit_with_ckpt(tmp_path, epochs=2, cbs=(), **kw):
    learn = small_learn()
    ckcb = M.CheckpointCallback(tmp_path / 'checkpoint.pt', config={'arch': 'mlp', 'epochs': epochs}, **kw)
    run = M.Runner(cbs=[M.AvgStatsCallback([M.accuracy]), ckcb, *cbs]); run.logger = lambda *a: None
    run.fit(epochs, learn)
    return learn, run

def test_checkpoint_contents_and_load_errors(tmp_path):
    learn, run = fit_with_ckpt(tmp_path)
    ck = M.read_checkpoint(tmp_path / 'checkpoint.pt')
    assert (ck['epoch'], ck['epochs'], ck['n_iter'], ck['config'], len(ck['history'])) == (2, 2, 6, {'arch': 'mlp', 'epochs': 2}, 2)
    assert set(ck['rng'][0]) == {'torch', 'cuda', 'numpy', 'python'} and ck['opt']['state']    # momentum buffers saved
    fresh = small_learn(seed=1)
    M.load_checkpoint(tmp_path / 'checkpoint.pt', fresh.model, fresh.opt)
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, fresh.model.state_dict()[k])
    torch.testing.assert_close(fresh.opt.state_dict()['state'][0]['momentum_buffer'], learn.opt.state_dict()['state'][0]['momentum_buffer'])
    five = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))          # another class count
    with pytest.raises(ValueError, match=r"Sequential \(mlp\), 3 outputs.*Sequential, 5 outputs.*\(3, 16\) in the checkpoint vs \(5, 16\)"):
        M.load_checkpoint(tmp_path / 'checkpoint.pt', five)
    class Net(nn.Module):
        def __init__(self): super().__init__(); self.conv = nn.Conv2d(1, 3, 3)
    with pytest.raises(ValueError, match=r"holds a Sequential \(mlp\).*but the model is a Net.*conv.weight missing from the checkpoint"):
        M.load_checkpoint(tmp_path / 'checkpoint.pt', Net())
    with pytest.raises(FileNotFoundError, match='no checkpoint file at'): M.load_checkpoint(tmp_path / 'nope.pt', five)
    (tmp_path / 'junk.pt').write_bytes(b'not a torch file')
    with pytest.raises(ValueError, match='junk.pt could not be read'): M.load_checkpoint(tmp_path / 'junk.pt', five)
    torch.save({'a': torch.zeros(1)}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='not a checkpoint written by CheckpointCallback'): M.read_checkpoint(tmp_path / 'other.pt')

def test_keyboard_interrupt_writes_separate_checkpoint(tmp_path):
    class CtrlC(M.Callback):
        def after_batch(self):
            if self.run.in_train and self.run.epoch == 1 and self.run.iter == 1: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): fit_with_ckpt(tmp_path, epochs=3, cbs=[CtrlC()])
    assert M.read_checkpoint(tmp_path / 'checkpoint.pt')['epoch'] == 1                  # the clean end-of-epoch one is kept
    ck = M.read_checkpoint(M.interrupted_path(tmp_path / 'checkpoint.pt'))
    assert ck['epoch'] == 1 and ck['interrupted'] == {'epoch': 1, 'iter': 1}
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.interrupted.pt', 'checkpoint.pt']

def test_resume_in_process_and_checks(tmp_path):
    "Resume after 1 of 3 epochs == 3 uninterrupted epochs (in process; the SIGKILL test below does it across processes)."
    full, _ = fit_with_ckpt(tmp_path / 'full', epochs=3)
    class Stop(M.Callback):
        order = 30                              # after CheckpointCallback (20) has saved the epoch
        def after_epoch(self): raise M.CancelTrainException()
    fit_with_ckpt(tmp_path / 'part', epochs=3, cbs=[Stop()])
    ck_path = tmp_path / 'part' / 'checkpoint.pt'
    assert M.read_checkpoint(ck_path)['epoch'] == 1
    torch.manual_seed(123)                      # different RNG state: the checkpoint must restore it
    learn = small_learn(seed=5)                 # different weights: the checkpoint must restore them
    ckcb = M.CheckpointCallback(ck_path, resume=True)
    run = M.Runner(cbs=[M.AvgStatsCallback([M.accuracy]), ckcb]); run.logger = lambda *a: None
    # the DataLoader shuffles with the global torch RNG (no generator): restored from the checkpoint too
    run.fit(3, learn)
    for k, v in full.model.state_dict().items(): torch.testing.assert_close(learn.model.state_dict()[k], v, atol=1e-6, rtol=0)
    assert [h['epoch'] for h in run.avg_stats.history] == [0, 1, 2]
    with pytest.raises(ValueError, match='nothing to resume'):      # all 3 epochs done now
        M.Runner(cbs=[M.CheckpointCallback(ck_path, resume=True)]).fit(3, small_learn())

def test_loader_state_of_the_fast_loader():
    "loader_state/set_loader_state (05a) save and restore a loader through its state_dict(): 08a's order and crops."
    tbl = M.TensorBatchLoader(torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8), torch.arange(8), 8, 4, train=True, seed=1)
    ls = M.loader_state(tbl); first = next(iter(tbl))
    M.set_loader_state(tbl, ls); again = next(iter(tbl))
    torch.testing.assert_close(again[1], first[1]); torch.testing.assert_close(again[0], first[0])

def test_resume_config(tmp_path):
    with pytest.raises(M.ArgError, match='no such folder') as e: M.resume_config(tmp_path / 'missing')
    assert e.value.arg == 'run_dir'                                 # names the Python argument; the CLI says --resume
    with pytest.raises(M.ArgError, match='no config.json'): M.resume_config(tmp_path)
    (tmp_path / 'config.json').write_text('{bad json')
    with pytest.raises(M.ArgError, match='config.json is not valid JSON'): M.resume_config(tmp_path)
    cfg = {'arch': 'mlp', 'epochs': 3}
    (tmp_path / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(M.ArgError, match='before its first checkpoint'): M.resume_config(tmp_path)
    class Stop(M.Callback):
        order = 30                              # after CheckpointCallback (20) has saved the epoch
        def after_epoch(self): raise M.CancelTrainException()
    fit_with_ckpt(tmp_path, epochs=3, cbs=[Stop()])
    assert M.resume_config(tmp_path) == (cfg, tmp_path / 'checkpoint.pt')
    (tmp_path / 'config.json').write_text(json.dumps({**cfg, 'lr': 1}))
    with pytest.warns(UserWarning, match=r"in \['lr'\]"): M.resume_config(tmp_path)
    os.replace(tmp_path / 'checkpoint.pt', M.interrupted_path(tmp_path / 'checkpoint.pt'))
    with pytest.raises(M.ArgError, match='only checkpoint.interrupted.pt'): M.resume_config(tmp_path)

# ----------------------------------------------------------------------------------------------------------------------
# 4. the real thing: SIGKILL in the middle of an epoch, resume in a new process, compare with an uninterrupted run
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, fmnist):
    script = write_script(tmp_path, 'train.py', RESUME_SCRIPT)
    full_dir, kill_dir = tmp_path / 'full', tmp_path / 'killed'
    pf = subprocess.Popen([PY, str(script), str(full_dir), 'full'], env=sub_env(FMNIST_SUBSET=str(fmnist)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pk = subprocess.Popen([PY, str(script), str(kill_dir), 'killme'], env=sub_env(FMNIST_SUBSET=str(fmnist)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while not (kill_dir / 'stalled').exists():
            assert pk.poll() is None, pk.communicate()[0][-3000:]
            assert time.time() - t0 < 120, 'training did not reach the middle of epoch 1'
            time.sleep(0.1)
        assert M.read_checkpoint(kill_dir / 'checkpoint.pt')['epoch'] == 1      # written at the end of epoch 0, loads
    finally: pk.send_signal(signal.SIGKILL); pk.wait()
    assert pk.returncode == -signal.SIGKILL and not (kill_dir / 'final.pt').exists()
    assert M.read_checkpoint(kill_dir / 'checkpoint.pt')['epoch'] == 1          # still whole after the kill
    pr = subprocess.Popen([PY, str(script), str(kill_dir), 'resume'], env=sub_env(FMNIST_SUBSET=str(fmnist)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finish(pf, 'uninterrupted run'); finish(pr, 'resumed run')
    a, b = torch.load(kill_dir / 'final.pt'), torch.load(full_dir / 'final.pt')
    assert a['epochs_seen'] == [1, 2] and b['epochs_seen'] == [0, 1, 2]              # resumed at epoch 1, not from scratch
    for k in b['model']: torch.testing.assert_close(a['model'][k], b['model'][k], atol=1e-6, rtol=0)
    assert len(a['history']) == len(b['history']) == 3
    for ha, hb in zip(a['history'], b['history']):
        for k in ('epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy'): assert abs(ha[k] - hb[k]) <= 1e-6, (k, ha, hb)
    assert b['history'][-1]['valid_accuracy'] > 0.6                                    # it really learned something
    assert M.read_checkpoint(kill_dir / 'checkpoint.pt')['epoch'] == 3

def test_nb09_optimizer_checkpoint_roundtrip(tmp_path):
    "The course's own Adam (nb_09 StatefulOptimizer) is saved and restored through weights_only loading, with DeviceCallback."
    learn = small_learn()
    learn.opt = M.adam_opt(lr=1e-2, wd=1e-4)(learn.model.parameters())
    run = M.Runner(cbs=[M.DeviceCallback('cpu'), M.DistributedCallback(), M.CheckpointCallback(tmp_path / 'c.pt')])
    run.fit(1, learn)
    fresh = small_learn(seed=3); fresh.opt = M.adam_opt(lr=5e-1, wd=0.)(fresh.model.parameters())
    M.load_checkpoint(tmp_path / 'c.pt', fresh.model, fresh.opt)
    sa, sb = learn.opt.state_dict(), fresh.opt.state_dict()
    assert sb['param_groups'][0]['lr'] == 1e-2 and sa['state'].keys() == sb['state'].keys() and sa['state']
    for i in sa['state']:
        for k, v in sa['state'][i].items(): assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb['state'][i][k])), (i, k)
    wrong = M.adam_opt(lr=1e-2)(nn.Linear(8, 3).parameters())
    with pytest.raises(ValueError, match='optimizer state does not fit StatefulOptimizer'):
        M.load_checkpoint(tmp_path / 'c.pt', small_learn().model, wrong)
