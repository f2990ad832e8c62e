#!/usr/bin/env python3
"""Benchmark: images per second from files to training batches, per-item path vs fast path, in one run.

    python tests/bench_pipeline.py [--n 3000] [--size 128] [--bs 64] [--workers N] [--device auto|cpu|cuda] [--quick]

Per-item path: ImageList + [make_rgb, ResizeFixed, to_byte_tensor, to_float_tensor] in a DataLoader with worker
processes, then normalisation on the device — every epoch decodes every image again.
Fast path: `mapped_databunch` — each image decoded once into a uint8 cache file (epoch 1 pays for that), then random
resized crop, flip and normalisation on whole batches on the device. Both paths are timed to the point where a batch
sits on the device, ready for the model (CUDA is synchronised before each clock read). Prints a table; asserts nothing.
A second table compares notebook 08b's one cache format read two ways in one run: through the memory map and from a
copy in memory (`in_memory=True`): build img/s and epoch img/s of each, and the ratio memory-mapped / in-memory.
"""
import argparse, shutil, tempfile, time
from exp.nb_08b import *


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def epoch_speed(dl, device, tfm=None):
    "Images per second for one pass over `dl`, each batch moved to `device` (and transformed) before the clock stops."
    sync(device); t0, n = time.perf_counter(), 0
    for xb, yb in dl:
        xb = xb.to(device, non_blocking=True)
        if tfm is not None: xb = tfm(xb)
        n += len(xb)
    sync(device)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=3000, help='training images used (0 = all 9469)')
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--workers', type=int, default=None, help='DataLoader workers / decode processes (default: all cores)')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='300 images, 2 epochs: a smoke run, not a measurement')
    a = ap.parse_args(argv)
    if a.quick: a.n, a.epochs = 300, 2
    device = default_device() if a.device == 'auto' else torch.device(a.device)
    workers = default_num_workers() if a.workers is None else a.workers
    path = untar_data(URLs.IMAGENETTE_160)
    il = ImageList.from_files(path, tfms=[make_rgb, ResizeFixed(a.size), to_byte_tensor, to_float_tensor])
    sd = SplitData.split_by_func(il, partial(grandparent_splitter, valid_name='val'))
    if a.n: sd = SplitData(sd.train.new(sd.train.items[::max(1, len(sd.train) // a.n)][:a.n]), sd.valid.new(sd.valid.items[:256]))
    ll = label_by_func(sd, parent_labeler, proc_y=CategoryProcessor())
    n = len(ll.train)
    print(f'# {hardware_info()}\n# {n} training images, {a.size} px, bs {a.bs}, {workers} workers, device {device}')
    per_item = ll.to_databunch(a.bs, c_in=3, c_out=10, num_workers=workers).train_dl
    norm = lambda x: norm_imagenette(x)
    rows = []
    for e in range(a.epochs): rows.append(('per-item DataLoader', e + 1, epoch_speed(per_item, device, norm)))
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        fast = mapped_databunch(ll, a.size, a.bs, device=device, cache_dir=tmp, num_workers=workers, seed=0, stats=imagenette_stats,
                                in_memory=True).train_dl
        build = time.perf_counter() - t0
        first = epoch_speed(fast, device)
        rows.append(('fast path (decode + cache + epoch)', 1, n / (build + n / first)))
        for e in range(1, a.epochs): rows.append(('fast path', e + 1, epoch_speed(fast, device)))
        caches = cache_speeds(ll, a, device, workers, tmp)
    finally: shutil.rmtree(tmp)
    base = sum(r[2] for r in rows if r[0].startswith('per-item')) / a.epochs
    print('\n| path | epoch | img/s | vs per-item (mean) |\n| --- | --- | --- | --- |')
    for name, e, s in rows: print(f'| {name} | {e} | {s:,.0f} | {s / base:.1f}x |')
    (_, mb, me), (_, ib, ie) = caches
    print('\n| cache | build img/s | epoch img/s |\n| --- | --- | --- |')
    for name, b, e in caches: print(f'| {name} | {b:,.0f} | {e:,.0f} |')
    print(f'| memory-mapped / in memory | {mb / ib:.2f}x | {me / ie:.2f}x |')
    return rows, caches


def cache_speeds(ll, a, device, workers, tmp):
    "(name, build img/s, later-epoch img/s) of the cache read through its memory map and copied in memory, each built afresh."
    out, n = [], len(ll.train)
    for name, mem in (('memory-mapped', False), ('in memory', True)):
        t0 = time.perf_counter()
        dl = mapped_databunch(ll, a.size, a.bs, device=device, cache_dir=tmp / name[:2], num_workers=workers, seed=0,
                              stats=imagenette_stats,
                              in_memory=mem).train_dl
        build = n / (time.perf_counter() - t0)
        epoch_speed(dl, device)                                      # the first pass reads the map's pages in
        out.append((name, build, epoch_speed(dl, device)))
    return out


if __name__ == '__main__': main()
