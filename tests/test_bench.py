"""Smoke runs of the CPU benchmarks at tiny sizes: they run end to end and their own checks hold. No timing is asserted
(speed is read from the tables `python3 dev.py bench` prints, never from a timed test)."""
import bench_ceiling, bench_pipeline, bench_runner


def test_bench_runner_quick(capsys):
    rows = bench_runner.main(['--quick'])
    assert len(rows) == 2 and all(r[4] for r in rows)              # both loops end with bit-identical weights
    out = capsys.readouterr().out
    assert 'Runner / bare (median of paired ratios)' in out and 'process CPU time' in out


def test_bench_pipeline_quick(capsys):
    rows, caches = bench_pipeline.main(['--quick', '--workers', '0'])
    assert [(r[0], r[1]) for r in rows] == [('per-item DataLoader', 1), ('per-item DataLoader', 2),
                                            ('fast path (decode + cache + epoch)', 1), ('fast path', 2)]
    assert all(r[2] > 0 for r in rows)
    out = capsys.readouterr().out
    assert '| fast path | 2 |' in out
    # the cache table: build and epoch img/s of nb 08b's cache read through its map and copied in memory, and their ratios
    assert [c[0] for c in caches] == ['memory-mapped', 'in memory'] and all(b > 0 and e > 0 for _, b, e in caches)
    assert '| cache | build img/s | epoch img/s |' in out and '| memory-mapped / in memory |' in out



def test_bench_ceiling_quick(capsys):
    r = bench_ceiling.main(['--quick'])
    assert all(v > 0 for v in r['peaks'].values()) and None in r['peaks']   # fp32 always
    assert r['model_ips'] > 0 and r['amp_ips'] > 0 and r['exp_ips'] > 0
    assert 1e6 < r['flop'] < 1e10   # xresnet18 at 32 px: about 0.06 GFLOP per training image
    out = capsys.readouterr().out
    assert '| model only, fp32 (in-memory tensors) |' in out and 'of fp32 peak' in out
    assert 'of model only as exp-train |' in out
