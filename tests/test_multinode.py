"""Two torchrun "nodes" on this machine (one gloo process each, c10d rendezvous on 127.0.0.1) train the fast pipeline of
notebook 08b: each node builds its own memory-mapped cache, each process reads its shard of every epoch, and the weights
equal those of one process with the whole global batch."""
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest, torch

from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

SCRIPT = r'''
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from exp.nb_10 import *
import exp.nb_08a
exp.nb_08a.batch_random_resized_crop = lambda x, size, *a, **k: batch_center_crop(x, size)   # no random crops: comparable
root, cache, out = map(Path, sys.argv[1:4])
data = folder_databunch(root, size=16, bs=16, num_workers=0, pipeline='fast', device='cpu', cache_dir=cache, seed=0,
                        stats=((0.5,) * 3, (0.25,) * 3), progress=False)
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
learn = Learner(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), F.cross_entropy, data)
info = dict(rank=int(os.environ.get('RANK', 0)), batches=[])
class Probe(Callback):
    order = 30
    def begin_batch(self):
        if self.run.in_train: info['batches'].append(self.run.yb.tolist())
run = Runner(cbs=[AvgStatsCallback([accuracy]), DistributedCallback(split_batch=True), Probe()])
run.logger = lambda *a, **k: None
run.fit(2, learn)
info.update(history=run.avg_stats.history, caches=sorted(f.name[:11] for f in cache.glob('*.u8')))
out.mkdir(exist_ok=True)
(out / f"rank{info['rank']}.json").write_text(json.dumps(info))
if is_main_process(): torch.save(model.state_dict(), out / 'final.pt')
'''


def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_two_torchrun_nodes_match_one_process(tmp_path):
    root = make_image_folder(tmp_path / 'data', ('cat', 'dog', 'fish'), n_train=24, n_valid=6, shape=(24, 24))
    script = tmp_path / 'train.py'; script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get('PYTHONPATH', ''), OMP_NUM_THREADS='1', GLOO_SOCKET_IFNAME='lo')
    port, ddp = free_port(), tmp_path / 'ddp'
    nodes = [subprocess.Popen([PY, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc-per-node', '1', '--node-rank', str(i),
                               '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}', '--rdzv-id', 'exp-test',
                               str(script), str(root), str(tmp_path / f'cache-node{i}'), str(ddp)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    one = subprocess.run([PY, str(script), str(root), str(tmp_path / 'cache-one'), str(tmp_path / 'one')], env=env,
                         capture_output=True, text=True, timeout=240)
    outs = [n.communicate(timeout=240)[0] for n in nodes]
    assert one.returncode == 0, one.stderr[-3000:]
    for n, o in zip(nodes, outs): assert n.returncode == 0, o[-4000:]
    r0, r1 = [json.loads((ddp / f'rank{r}.json').read_text()) for r in (0, 1)]
    o = json.loads((tmp_path / 'one' / 'rank0.json').read_text())
    for i in range(2): assert json.loads((ddp / f'rank{i}.json').read_text())['caches'] == ['train-20px-', 'valid-18px-']   # each node built its own
    assert len(r0['batches']) == len(r1['batches']) == len(o['batches']) == 2 * (72 // 16)
    for a, b, c in zip(r0['batches'], r1['batches'], o['batches']):         # two shards of 8 = the one process's batch of 16
        assert len(a) == len(b) == 8 and sorted(a + b) == sorted(c)
    a, b = torch.load(ddp / 'final.pt'), torch.load(tmp_path / 'one' / 'final.pt')
    for k in b: torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    for ha, hb in zip(r0['history'], o['history']):
        for k in ('train_loss', 'valid_loss', 'valid_accuracy'): assert abs(ha[k] - hb[k]) < 1e-5, (k, ha, hb)
