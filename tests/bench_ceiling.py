#!/usr/bin/env python3
"""Benchmark: how close exp-train's training comes to what this CPU can compute, in one run.

    python tests/bench_ceiling.py [--size 64] [--bs 64] [--limit 150] [--arch xresnet18] [--quick]

Prints one table:
  1. matmul peak: GFLOP/s of a large fp32 matmul (2048 x 2048), the practical peak of this machine's BLAS;
  2. model only: training images/s of the model (forward + backward + SGD step) on random tensors already in memory,
     same architecture, size and batch as exp-train; its GFLOP/s from `torch.utils.flop_counter`;
  3. exp-train: training images/s of `train()` (fast pipeline, default recipe) on Imagenette-160, `--limit` images
     per class, timed from the first batch of epoch 2 to the start of its validation (epoch 1 warms up).
Ratios: model GFLOP/s / matmul peak (how well the model uses the CPU) and exp-train / model only (what the data
pipeline and the recipe's tricks cost). Asserts nothing.
"""
import argparse, tempfile, time
from torch.utils.flop_counter import FlopCounterMode
from exp.nb_10a import *


def matmul_gflops(n=2048, reps=10):
    "GFLOP/s of an fp32 (n, n) @ (n, n) matmul, best of `reps`."
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b   # warm-up
    best = float('inf')
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _step(model, opt, x, y):
    "One training step: forward, loss, backward, SGD step."
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()


def model_only(arch, size, bs, steps=12):
    "(images/s, FLOP per training image) of `arch` training on in-memory random tensors."
    model = make_model(arch).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 10, (bs,))
    with FlopCounterMode(display=False) as fc:
        _step(model, opt, x, y)
    for _ in range(2): _step(model, opt, x, y)   # warm-up
    t0 = time.perf_counter()
    for _ in range(steps): _step(model, opt, x, y)
    return steps * bs / (time.perf_counter() - t0), fc.get_total_flops() / bs


class TrainClock(Callback):
    "Training images and seconds of the last epoch's training phase."
    order = 100
    def begin_epoch(self):
        self.n, self.t0 = 0, time.perf_counter()
    def after_batch(self):
        if self.run.in_train: self.n += len(self.run.xb)
    def begin_validate(self): self.seconds = time.perf_counter() - self.t0


def exp_train_speed(size, bs, limit, arch):
    "Training images/s of `train()`'s second epoch on `limit` Imagenette images per class."
    clock = TrainClock()
    with tempfile.TemporaryDirectory() as tmp:
        train(cbs=[clock], size=size, bs=bs, epochs=2, limit=limit, arch=arch, progress=False,
              out=Path(tmp) / 'run', cache_dir=Path(tmp) / 'cache')
    return clock.n / clock.seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--limit', type=int, default=150, help='training images per class for exp-train')
    ap.add_argument('--arch', default='xresnet18')
    ap.add_argument('--quick', action='store_true', help='tiny sizes: a smoke run, not a measurement')
    a = ap.parse_args(argv)
    if a.quick: a.size, a.bs, a.limit = 32, 16, 20
    print(f'# {hardware_info()}; {torch.get_num_threads()} threads')
    print(f'# {a.arch}, {a.size} px, bs {a.bs}; exp-train on {a.limit} Imagenette images per class')
    peak = matmul_gflops(512 if a.quick else 2048)
    ips, flop = model_only(a.arch, a.size, a.bs, 2 if a.quick else 12)
    exp_ips = exp_train_speed(a.size, a.bs, a.limit, a.arch)
    model_gflops = ips * flop / 1e9
    rows = [('matmul peak (fp32, BLAS)', '', f'{peak:.1f}', ''),
            ('model only (in-memory tensors)', f'{ips:.1f}', f'{model_gflops:.1f}',
             f'{model_gflops / peak:.2f} of matmul peak'),
            ('exp-train (fast pipeline, default recipe)', f'{exp_ips:.1f}',
             f'{exp_ips * flop / 1e9:.1f}', f'{exp_ips / ips:.2f} of model only')]
    print(f'# training FLOP per image (forward + backward): {flop / 1e9:.2f} GFLOP')
    print('| what | train img/s | GFLOP/s | ratio |\n|---|---|---|---|')
    for r in rows: print('| ' + ' | '.join(r) + ' |')
    return dict(peak=peak, model_ips=ips, flop=flop, exp_ips=exp_ips)


if __name__ == '__main__': main()
