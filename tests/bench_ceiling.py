#!/usr/bin/env python3
"""Benchmark: how close exp-train's training comes to what this CPU can compute, in one run.

    python tests/bench_ceiling.py [--size 64] [--bs 64] [--limit 150] [--arch xresnet18] [--quick]

Prints one table:
  1. matmul peak: GFLOP/s of a large matmul (2048 x 2048) in fp32 and, where the CPU multiplies bf16 natively, in
     bf16: the practical peaks of this machine's BLAS;
  2. model only: training images/s of the model (forward + backward + SGD step) on random tensors already in memory,
     same architecture, size and batch as exp-train, in fp32 and as exp-train runs it (channels-last, and bf16
     autocast where `amp_dtype` picks it); its GFLOP/s from `torch.utils.flop_counter`;
  3. exp-train: training images/s of `train()` (fast pipeline, default recipe) on Imagenette-160, `--limit` images
     per class, timed from the first batch of epoch 2 to the start of its validation (epoch 1 warms up).
Ratios: model GFLOP/s / matmul peak of the same precision (how well the model uses the CPU) and exp-train / model
only as exp-train runs it (what the data pipeline, the optimizer and the recipe's tricks cost). Asserts nothing.
"""
import argparse, tempfile, time
from torch.utils.flop_counter import FlopCounterMode
from exp.nb_10a import *


def matmul_gflops(n=2048, reps=10, dtype=torch.float32):
    "GFLOP/s of a `dtype` (n, n) @ (n, n) matmul, best of `reps`."
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b   # warm-up
    best = float('inf')
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _step(model, opt, x, y, dtype=None):
    "One training step: forward (under `dtype` autocast if given), loss, backward, SGD step."
    with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()


def model_only(arch, size, bs, steps=12, dtype=None, channels_last=False):
    "(images/s, FLOP per training image) of `arch` training on in-memory random tensors."
    model = make_model(arch).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 10, (bs,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as fc:
        _step(model, opt, x, y, dtype)
    for _ in range(2): _step(model, opt, x, y, dtype)   # warm-up
    t0 = time.perf_counter()
    for _ in range(steps): _step(model, opt, x, y, dtype)
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
    n, steps = (512, 2) if a.quick else (2048, 12)
    amp = amp_dtype('cpu')   # what exp-train's mixed_precision trick uses on this CPU
    name = {None: 'fp32', torch.bfloat16: 'bf16'}
    peaks = {None: matmul_gflops(n)}
    if amp is not None: peaks[amp] = matmul_gflops(n, dtype=amp)
    ips, flop = model_only(a.arch, a.size, a.bs, steps)
    amp_ips, _ = model_only(a.arch, a.size, a.bs, steps, dtype=amp, channels_last=True)
    exp_ips = exp_train_speed(a.size, a.bs, a.limit, a.arch)
    gf = lambda v: f'{v * flop / 1e9:.1f}'
    rows = [(f'matmul peak ({name[d]} {n}², BLAS)', '', f'{p:.1f}', '') for d, p in peaks.items()]
    rows += [('model only, fp32 (in-memory tensors)', f'{ips:.1f}', gf(ips),
              f'{ips * flop / 1e9 / peaks[None]:.2f} of fp32 peak'),
             (f'model only, {name[amp]} autocast + channels-last (as exp-train)', f'{amp_ips:.1f}',
              gf(amp_ips), f'{amp_ips * flop / 1e9 / peaks[amp]:.2f} of {name[amp]} peak'),
             ('exp-train (fast pipeline, default recipe)', f'{exp_ips:.1f}', gf(exp_ips),
              f'{exp_ips / amp_ips:.2f} of model only as exp-train')]
    print(f'# training FLOP per image (forward + backward): {flop / 1e9:.2f} GFLOP')
    print('| what | train img/s | GFLOP/s | ratio |\n|---|---|---|---|')
    for r in rows: print('| ' + ' | '.join(r) + ' |')
    return dict(peaks=peaks, model_ips=ips, amp_ips=amp_ips, flop=flop, exp_ips=exp_ips)


if __name__ == '__main__': main()
