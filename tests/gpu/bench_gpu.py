#!/usr/bin/env python3
"""GPU benchmark, all measurements in one run (see run_gpu.sh for the setup). Prints a markdown table.

1. model-only ceiling: xresnet50 train steps at 128 px on synthetic data already on the GPU (bf16 autocast, channels_last);
2. exp: `python -m exp.nb_10` (xresnet50, 5 epochs, 128 px, bs 64, fast pipeline) timed from process start to exit, plus
   the accuracy and per-epoch seconds from its run folder (metrics.json, config.json);
3. fastai 2.8.12's train_imagenette recipe (xresnet50 + Mish, ranger, flat-cos lr 8e-3, bs 64, fp16, label smoothing,
   RandomResizedCrop 128) in a subprocess, timed the same way;
4. the data pipeline alone: tests/bench_pipeline.py on the GPU (per-item path vs fast path).
"""
import argparse, json, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FASTAI = r'''
import os, sys, time
from pathlib import Path
from fastai.vision.all import *
path = Path(os.environ['EXP_DATA']) / 'imagenette2-160'
exts = ['.webp', '.jpg', '.jpeg', '.png']
dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=lambda p: get_files(p, extensions=exts, recurse=True),
                   splitter=GrandparentSplitter(valid_name='val'), get_y=parent_label,
                   item_tfms=[RandomResizedCrop(128, min_scale=0.35), FlipItem(0.5)],
                   batch_tfms=[Normalize.from_stats(*imagenet_stats)])
dls = dblock.dataloaders(path, bs=64, num_workers=min(15, os.cpu_count()))
learn = Learner(dls, xresnet50(n_out=10, act_cls=Mish), opt_func=ranger, metrics=accuracy,
                loss_func=LabelSmoothingCrossEntropy()).to_fp16()
learn.fit_flat_cos(int(sys.argv[1]), 8e-3, wd=1e-2)
print('FINAL_ACC', float(learn.recorder.values[-1][2]))
'''


def timed(cmd, env=None, log=None):
    "Run `cmd`; return (wall seconds from start to exit, stdout+stderr)."
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if log: Path(log).write_text(out)
    if r.returncode: print(out[-4000:]); raise SystemExit(f'failed: {cmd}')
    return time.time() - t0, out


def ceiling(bs, steps=30):
    "Model-only train img/s of xresnet50 at 128 px (bf16 autocast, channels_last, SGD)."
    import torch
    from exp.nb_10 import xresnet50
    dev = torch.device('cuda')
    m = xresnet50(c_out=10).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(bs, 3, 128, 128, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=dev)
    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16): loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(5): step()
    torch.cuda.synchronize(); t0 = time.time()
    for _ in range(steps): step()
    torch.cuda.synchronize()
    return bs * steps / (time.time() - t0)


METRIC_KEYS = {'epoch', 'train_loss', 'train_acc', 'valid_loss', 'valid_acc', 'lr', 'seconds'}   # exp.nb_10's RunLogger rows


def exp_run_summary(run_dir, epochs):
    "Final accuracy and throughput of an exp-train run folder: metrics.json (a list of RunLogger rows) and config.json."
    run_dir = Path(run_dir)
    rows = json.loads((run_dir / 'metrics.json').read_text())
    cfg = json.loads((run_dir / 'config.json').read_text())
    if not isinstance(rows, list) or not rows or any(METRIC_KEYS - set(r) for r in rows):
        raise SystemExit(f'{run_dir}/metrics.json: expected a list of rows with keys {sorted(METRIC_KEYS)}')
    if [r['epoch'] for r in rows] != list(range(1, epochs + 1)):
        raise SystemExit(f'{run_dir}/metrics.json: epochs {[r["epoch"] for r in rows]}, expected 1..{epochs}')
    secs = sum(float(r['seconds']) for r in rows)
    return dict(valid_acc=float(rows[-1]['valid_acc']), epoch_seconds=secs, n_train=int(cfg['n_train']),
                n_valid=int(cfg['n_valid']), pipeline=cfg.get('pipeline', '?'),
                train_img_per_s=int(cfg['n_train']) * len(rows) / secs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', type=Path, default=Path('/tmp/exp-gpu-bench'))
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--skip-fastai', action='store_true')
    ap.add_argument('--parse-only', type=Path, default=None, metavar='RUN_DIR',
                    help='only print exp_run_summary of an existing exp-train run folder (checks the parsing; no GPU needed)')
    a = ap.parse_args()
    if a.parse_only is not None:
        print(json.dumps(exp_run_summary(a.parse_only, a.epochs), indent=1)); return
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    c64, c256 = ceiling(64), ceiling(256)
    rows += [('model-only ceiling, xresnet50, bs 64', f'{c64:,.0f} img/s', ''), ('model-only ceiling, xresnet50, bs 256', f'{c256:,.0f} img/s', '')]
    run_dir = a.out / 'exp-run'
    secs, out = timed([sys.executable, '-m', 'exp.nb_10', '--arch', 'xresnet50', '--epochs', str(a.epochs), '--bs', '64',
                       '--size', '128', '--pipeline', 'fast', '--out', str(run_dir), '--no-progress'], log=a.out / 'exp.log')
    s = exp_run_summary(run_dir, a.epochs)
    acc, train_ips = s['valid_acc'], s['train_img_per_s']
    rows.append((f'exp xresnet50, {a.epochs} epochs ({s["pipeline"]} pipeline)', f'{secs:.1f} s wall', f'{acc:.2%}'))
    rows.append(('exp epoch time (sum over epochs, incl. validation)', f'{s["epoch_seconds"]:.1f} s', ''))
    rows.append(('exp train throughput vs ceiling (bs 64)', f'{train_ips:,.0f} img/s', f'{train_ips / c64:.2f}x of ceiling; '
                 'train images / epoch seconds, which include validation, so a lower bound'))
    if not a.skip_fastai:
        script = a.out / 'fastai_imagenette.py'; script.write_text(FASTAI)
        fsecs, fout = timed([sys.executable, str(script), str(a.epochs)], log=a.out / 'fastai.log')
        facc = float(re.findall(r'FINAL_ACC ([0-9.]+)', fout)[-1])
        rows.append((f'fastai 2.8.12 xresnet50, {a.epochs} epochs', f'{fsecs:.1f} s wall', f'{facc:.2%}'))
        rows.append(('speed-up exp vs fastai', f'{fsecs / secs:.1f}x', f'accuracy diff {100 * (acc - facc):+.2f} points'))
    _, pout = timed([sys.executable, 'tests/bench_pipeline.py', '--device', 'cuda', '--n', '0'], log=a.out / 'pipeline.log')
    print(pout[-1500:])
    print('\n| measurement | value | note |\n| --- | --- | --- |')
    for r in rows: print('| ' + ' | '.join(r) + ' |')


if __name__ == '__main__': main()
