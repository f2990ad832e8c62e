"""`compile_model=True` / `exp-train --compile`: CompileCallback with the real inductor backend on the CPU (which needs a
C compiler) trains the same model as the uncompiled path, and the choice is recorded but free to change on --resume."""
import json, shutil

import pytest
import torch

from conftest import make_image_folder
from exp.nb_10a import train, resume_conflicts, CompileCallback, TrainOptions

needs_cc = pytest.mark.skipif(not (shutil.which('cc') or shutil.which('gcc')), reason="inductor on a CPU needs a C compiler")


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "2 classes x (8 train, 4 val) small PNGs, one colour per class."
    return make_image_folder(tmp_path_factory.mktemp('tinyc'), ('red', 'green'), shape=(24, 28), seed=1, ext='.png')


@needs_cc
def test_compiled_training_matches_eager(folder, tmp_path):
    torch._dynamo.reset(); torch._dynamo.utils.counters.clear()
    res = {}
    for c in (False, True):
        out = train(folder, size=16, epochs=1, bs=8, lr=0.02, arch='draft-cnn', tricks='none', device='cpu', workers=0,
                    progress=False, out=tmp_path / f'run-{c}', cache_dir=tmp_path / 'cache', compile_model=c)
        res[c] = json.loads((out / 'metrics.json').read_text())[0], json.loads((out / 'config.json').read_text())
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1           # something really was compiled
    assert (res[True][1]['compile'], res[False][1]['compile']) == (True, False)  # recorded in config.json
    for k in ('train_loss', 'valid_loss', 'valid_acc'):                       # fused kernels round a little differently
        assert abs(res[True][0][k] - res[False][0][k]) <= 1e-3 * max(1., abs(res[False][0][k])), (k, res[True][0], res[False][0])
    torch._dynamo.reset()


def test_compile_is_free_on_resume():
    assert resume_conflicts(TrainOptions, {'compile_model': True}, {'compile_model': False}) == []
    assert CompileCallback().kwargs == dict(backend='inductor', mode=None, dynamic=None)
