"""The memory-mapped image cache of notebook 08b at a size that matters: a cache of over 500 MB is built and trained on for
one epoch (its loader as `mapped_databunch` builds it) in a subprocess whose peak resident memory must stay below half the cache size above its baseline (Linux)."""
import json, os, subprocess, sys
from pathlib import Path

import PIL.Image
import pytest

ROOT = Path(__file__).resolve().parents[1]
N_PER_CLASS, PX = 2700, 180          # 5,400 images x 3 x 180 x 180 bytes = 525 MB of uint8 pixels

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from exp.nb_08b import *
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss              # kB: the peak so far, i.e. after the imports
root, cache, px = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
ll = label_by_func(SplitData.split_by_func(ImageList.from_files(root, tfms=image_tfms(32)), partial(grandparent_splitter, valid_name='val')),
                   parent_labeler, proc_y=CategoryProcessor())
t0 = time.perf_counter()
images, _ = mapped_images(ll.train.x.items, px, cache / 'train.u8', num_workers=2, progress=False)
t_build = time.perf_counter() - t0
train = TensorBatchLoader(images.x, tensor(ll.train.y.items), 64, 32, train=True, seed=0)   # as mapped_databunch
train.images = images                                                  # makes it, with 32 px crops of a px cache
data = DataBunch(train, TensorBatchLoader(images.x[:16], tensor(ll.train.y.items[:16]), 64, 32), c_out=2)
after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
learn = Learner(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data)
run = Runner(cbs=[AvgStatsCallback([accuracy])]); run.logger = lambda *a, **k: None
t0 = time.perf_counter(); run.fit(1, learn); t_epoch = time.perf_counter() - t0
print(json.dumps(dict(base=base, after_build=after_build, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      workers=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, cache=data.train_dl.x.numel(),
                      n=data.train_dl.n_items, t_build=t_build, t_epoch=t_epoch, batches=len(data.train_dl),
                      mapped=data.train_dl.images is not None)))
'''


def write_images(root, n, px):
    "An ImageNet-style folder: `n` smooth `px`-pixel JPEGs per class in train/ (2 classes), 8 in val/; quick to write and to decode."
    base = PIL.Image.linear_gradient('L').resize((px, px)).convert('RGB')
    for split, k in (('train', n), ('val', 8)):
        for c, cls in enumerate(('ant', 'bee')):
            d = root / split / cls; d.mkdir(parents=True)
            for i in range(k): PIL.Image.blend(base, PIL.Image.new('RGB', (px, px), (200 * c, i % 256, 90)), 0.5).save(d / f'{i:05d}.jpg', quality=80)
    return root


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='page release (MADV_DONTNEED) and ru_maxrss in kB: Linux')
def test_big_cache_bounded_memory(tmp_path):
    "Build a 525 MB memory-mapped cache and train one epoch on it: peak RSS grows by less than half the cache size."
    root = write_images(tmp_path / 'data', N_PER_CLASS, PX)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, '-c', CHILD, str(root), str(tmp_path / 'cache'), str(PX)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    mb = lambda kb: kb / 1024
    print(f"cache {r['cache'] / 2**20:.0f} MiB; baseline {mb(r['base']):.0f} MiB; peak {mb(r['peak']):.0f} MiB "
          f"(+{mb(r['peak'] - r['base']):.0f}); decode workers' peak {mb(r['workers']):.0f} MiB; build {r['n'] / r['t_build']:.0f} img/s, "
          f"epoch {r['batches'] * 64 / r['t_epoch']:.0f} img/s")
    assert r['cache'] >= 500 * 2**20 and r['n'] == 2 * N_PER_CLASS and r['mapped']
    half = r['cache'] / 2 / 1024                                           # kB, as ru_maxrss counts on Linux
    assert r['peak'] - r['base'] < half and r['workers'] - r['base'] < half, r
