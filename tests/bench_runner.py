#!/usr/bin/env python
"""Benchmark: the exp Runner (TrainEvalCallback + AvgStatsCallback + the default nan guard) against a bare PyTorch loop.

Both train the same Fashion-MNIST MLP (784 -> nh -> 10, SGD) from the same seed on the same DataLoaders for the same
epochs and compute the same statistics (batch-size weighted train/valid loss and accuracy, summed on the device and
read once per epoch). Runs are interleaved (the order alternates each repeat) after one untimed warm-up of each, and the
script prints a table of seconds and the Runner/bare ratio (goal: <= 1.05), by wall clock and by process CPU time (which
other processes on the machine disturb less). It asserts nothing about timing; it does
check that both loops end with bit-identical weights.

    python tests/bench_runner.py            # full: 30000 train / 5000 valid images, 2 epochs, 21 repeats
    python tests/bench_runner.py --quick    # CI smoke run: 1000 / 500 images, 1 epoch, 2 repeats
"""
import argparse, statistics, time
import torch
from exp.nb_05 import (Runner, Learner, DataBunch, Dataset, get_dls, get_model, get_data, normalize, accuracy,
                       AvgStatsCallback, F, hardware_info)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='tiny sizes for a CI smoke run')
    p.add_argument('--n-train', type=int, default=30000, help="training images")
    p.add_argument('--n-valid', type=int, default=5000, help="validation images")
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--nh', type=int, default=50, help='hidden units')
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--threads', type=int, default=1, help='torch.set_num_threads for both loops')
    a = p.parse_args(argv)
    if a.quick: a.n_train, a.n_valid, a.epochs, a.repeats = 1000, 500, 1, 2
    return a


def make_data(a):
    "Normalized Fashion-MNIST subsets wrapped in a DataBunch (the same loaders serve both loops)."
    xt, yt, xv, yv = get_data()
    xt, yt, xv, yv = xt[:a.n_train], yt[:a.n_train], xv[:a.n_valid], yv[:a.n_valid]
    m, s = xt.mean(), xt.std()
    return DataBunch(*get_dls(Dataset(normalize(xt, m, s), yt), Dataset(normalize(xv, m, s), yv), a.bs), c_in=1, c_out=10)


def bare_loop(epochs, model, opt, data):
    "Hand-written loop computing the same weighted statistics as AvgStatsCallback; returns the last epoch's."
    for epoch in range(epochs):
        stats = {}
        for train, dl in ((True, data.train_dl), (False, data.valid_dl)):
            model.train(train)
            tot_loss = tot_acc = None; n = 0
            with torch.set_grad_enabled(train):
                for xb, yb in dl:
                    pred = model(xb); loss = F.cross_entropy(pred, yb)
                    if train: loss.backward(); opt.step(); opt.zero_grad()
                    bn = yb.shape[0]; n += bn
                    l, acc = loss.detach() * bn, accuracy(pred, yb).detach() * bn
                    tot_loss = l if tot_loss is None else tot_loss.add_(l)
                    tot_acc = acc if tot_acc is None else tot_acc.add_(acc)
            stats['train' if train else 'valid'] = (float(tot_loss) / n, float(tot_acc) / n)
    return stats


def runner_loop(epochs, model, opt, data):
    run = Runner(cbs=[AvgStatsCallback(accuracy)])
    run.logger = lambda *items: None                      # silence the per-epoch rows
    run.fit(epochs, Learner(model, opt, F.cross_entropy, data))
    h = run.avg_stats.history[-1]
    return {'train': (h['train_loss'], h['train_accuracy']), 'valid': (h['valid_loss'], h['valid_accuracy'])}


def timed(loop, a, data, seed=0):
    torch.manual_seed(seed)
    model, opt = get_model(data, a.lr, a.nh)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = loop(a.epochs, model, opt, data)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (wall, cpu), stats, [p.detach().clone() for p in model.parameters()]


BATCH_EVENTS = ('begin_batch', 'after_pred', 'after_loss', 'after_backward', 'after_step', 'after_batch')


def callback_cost(data, stats=True, n=3000):
    "Microseconds per training batch spent firing the six batch events (TrainEval, the nan guard, and AvgStats if `stats`)."
    model, opt = get_model(data, 0.1, 50)
    run = Runner(cbs=[AvgStatsCallback(accuracy)] if stats else []); run.logger = lambda *items: None
    run.learn, run.in_train, run.epoch, run.iter, run.iters = Learner(model, opt, F.cross_entropy, data), True, 0, 0, 1
    for cb in run.cbs: cb.set_runner(run)
    run('begin_fit'); run('begin_epoch')
    run.xb, run.yb = next(iter(data.train_dl))
    run.pred = model(run.xb); run.loss = F.cross_entropy(run.pred, run.yb)
    def fire():
        for e in BATCH_EVENTS: run(e)
    fire(); t0 = time.perf_counter()
    for _ in range(n): fire()
    return (time.perf_counter() - t0) / n * 1e6


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    print(hardware_info())
    print(f'MLP 784-{a.nh}-10, SGD lr {a.lr}, bs {a.bs}, {a.n_train} train / {a.n_valid} valid images, {a.epochs} epochs, '
          f'torch threads {a.threads}, {a.repeats} interleaved repeats{" (quick)" if a.quick else ""}')
    data = make_data(a)
    timed(bare_loop, a, data); timed(runner_loop, a, data)            # warm-up, untimed
    rows = []
    for r in range(a.repeats):
        order = (bare_loop, runner_loop) if r % 2 == 0 else (runner_loop, bare_loop)
        res = {f.__name__: timed(f, a, data) for f in order}
        ((tb, cb), sb, wb), ((tr, cr), sr, wr) = res['bare_loop'], res['runner_loop']
        same = all(torch.equal(x, y) for x, y in zip(wb, wr))
        rows.append((r, tb, tr, tr / tb, same, sb, sr, cr / cb))
    print(f"\n{'repeat':>6} {'bare s':>8} {'runner s':>9} {'ratio':>6} {'cpu ratio':>9} {'same weights':>13}")
    for r, tb, tr, ratio, same, _, _, cratio in rows: print(f'{r:>6} {tb:>8.3f} {tr:>9.3f} {ratio:>6.3f} {cratio:>9.3f} {str(same):>13}')
    med_b, med_r = statistics.median(x[1] for x in rows), statistics.median(x[2] for x in rows)
    min_b, min_r = min(x[1] for x in rows), min(x[2] for x in rows)
    print(f"{'median':>6} {med_b:>8.3f} {med_r:>9.3f} {med_r / med_b:>6.3f}")
    print(f"{'min':>6} {min_b:>8.3f} {min_r:>9.3f} {min_r / min_b:>6.3f}")
    # Each repeat times the two loops back to back, so their ratio cancels slow drifts of the machine's speed;
    # the median of those paired ratios is the headline figure.
    q1, _, q3 = statistics.quantiles([x[3] for x in rows], n=4) if len(rows) > 1 else (rows[0][3],) * 3
    print(f"paired ratios: quartiles {q1:.3f} .. {q3:.3f} (the spread is this machine's noise)")
    n_batches = a.epochs * (len(data.train_dl) + len(data.valid_dl))
    own, with_stats = callback_cost(data, stats=False), callback_cost(data)
    per_batch = 1e6 * statistics.median(x[1] for x in rows) / n_batches
    print(f"the Runner's own work per batch, measured directly: {own:.1f} us to fire the 6 batch events through "
          f"TrainEval and the nan guard ({own / per_batch:.1%} of the bare loop's {per_batch:.0f} us per batch); with "
          f"AvgStats {with_stats:.1f} us, whose sums the bare loop computes too")
    ratio, cratio = statistics.median(x[3] for x in rows), statistics.median(x[7] for x in rows)
    print(f"\nRunner / bare (median of paired ratios): {ratio:.3f}x wall clock, {cratio:.3f}x process CPU time  "
          f"(goal <= 1.05x: {'met' if ratio <= 1.05 else 'NOT met'})")
    _, _, _, _, _, sb, sr, _ = rows[-1]
    print(f"final epoch, bare:   train loss {sb['train'][0]:.4f} acc {sb['train'][1]:.4f} | valid loss {sb['valid'][0]:.4f} acc {sb['valid'][1]:.4f}")
    print(f"final epoch, runner: train loss {sr['train'][0]:.4f} acc {sr['train'][1]:.4f} | valid loss {sr['valid'][0]:.4f} acc {sr['valid'][1]:.4f}")
    if not all(x[4] for x in rows): print('WARNING: the two loops ended with different weights')
    return rows


if __name__ == '__main__': main()
