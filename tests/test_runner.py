"""Tests of the Runner, callbacks and schedules of exp.nb_04 / exp.nb_05 (run: `.venv/bin/pytest tests/test_runner.py`).

They use a tiny synthetic problem (3 training batches of 4 items, 2 validation batches of 8) so they run in seconds on a
CPU and need no data files.
"""
import math, pickle, tempfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn, optim
import torch.nn.functional as F

import exp.nb_04 as nb04
import exp.nb_05 as nb05
from exp.nb_05 import (EVENTS, Callback, Runner, DataBunch, Dataset, get_dls, get_model, AvgStats,
                       AvgStatsCallback, accuracy, CancelBatchException,
                       TerminateOnNaNCallback, TrainingDiverged, Recorder, ParamScheduler, LR_Find, ProgressCallback, TextLogger,
                       combine_scheds, cos_1cycle_anneal, sched_lin, sched_cos, sched_no, sched_exp, camel2snake, listify)

T = torch.optim.lr_scheduler


# ---------------------------------------------------------------------------------------------------------- helpers
from conftest import EventLog, Raiser, tiny_learner, loss_going_bad   # shared with test_faults.py


def events_of(*cbs, epochs=2, learn=None):
    log = EventLog()
    Runner(cbs=[log, *cbs]).fit(epochs, learn or tiny_learner())
    return log.events


def weights(m): return [p.detach().clone() for p in m.parameters()]


# ---------------------------------------------------------------------------------------------------------- exports
def test_contract_names_exported():
    for n in ['DataBunch', 'get_model', 'Learner', 'camel2snake', 'listify', 'Callback', 'TrainEvalCallback', 'Runner',
              'EVENTS', 'AvgStats', 'AvgStatsCallback', 'CallbackHost']:
        assert n in nb04.__all__, n
    for n in ['CancelTrainException', 'CancelEpochException', 'CancelBatchException', 'Runner', 'TerminateOnNaNCallback',
              'TrainingDiverged',
              'annealer', 'sched_lin', 'sched_cos', 'sched_no', 'sched_exp', 'combine_scheds', 'cos_1cycle_anneal',
              'Recorder', 'ParamScheduler', 'LR_Find', 'ProgressCallback', 'TextLogger', 'AvgStatsCallback']:
        assert n in nb05.__all__, n
    assert nb05.Runner is not nb04.Runner and issubclass(nb05.Runner, nb04.Runner)
    assert EVENTS == ('begin_fit', 'begin_epoch', 'begin_batch', 'after_pred', 'after_loss', 'after_backward', 'after_step',
                      'after_cancel_batch', 'after_batch', 'begin_validate', 'after_cancel_epoch', 'after_epoch',
                      'after_cancel_train', 'after_fit')


def test_names_and_listify():
    assert camel2snake('TrainEvalCallback') == 'train_eval_callback' and camel2snake('LR_Find') == 'lr_find'
    assert listify(None) == [] and listify('ab') == ['ab'] and listify((1, 2)) == [1, 2] and listify(3) == [3]
    run = Runner(cbs=[Recorder(), AvgStatsCallback(accuracy)], cb_funcs=[partial(ParamScheduler, 'lr', sched_no(1, 1))])
    assert isinstance(run.recorder, Recorder) and isinstance(run.avg_stats, AvgStatsCallback)
    assert isinstance(run.param_scheduler, ParamScheduler) and run.train_eval.name == 'train_eval'
    assert LR_Find().name == 'lr_find' and TerminateOnNaNCallback().name == 'terminate_on_nan'
    assert Runner().terminate_on_nan is Runner().cbs[1] or isinstance(Runner().terminate_on_nan, TerminateOnNaNCallback)


# ---------------------------------------------------------------------------------------------------------- event order
# The exact event sequence (a plain fit and every kind of cancellation) is pinned in one place: the test under
# "The event order, exactly" in nbs/05_anneal.ipynb. The tests here compare sequences or check single events.
def test_nb04_runner_same_normal_sequence():
    log = EventLog()
    nb04.Runner(cbs=[log]).fit(2, tiny_learner())
    assert log.events == events_of()


def test_cancelled_batches_do_not_step():
    learn = tiny_learner(); w0 = weights(learn.model)
    Runner(cbs=[Raiser(CancelBatchException, 'after_backward', epoch=0)]).fit(1, learn)
    assert all(torch.equal(a, b) for a, b in zip(weights(learn.model), w0))


def test_return_values_are_ignored():
    class ReturnsTrue(Callback):
        order = -50
        def begin_batch(self): return True
        def after_loss(self): return True
        def after_backward(self): return True
    assert events_of(ReturnsTrue()) == events_of()
    a, b = tiny_learner(), tiny_learner()
    torch.manual_seed(1); Runner(cbs=[ReturnsTrue()]).fit(2, a)
    torch.manual_seed(1); Runner().fit(2, b)
    assert all(torch.equal(x, y) for x, y in zip(weights(a.model), weights(b.model)))


def test_callback_order_and_ties():
    seen = []
    class C(Callback):
        def __init__(self, tag, order): self.tag, self.order = tag, order
        def begin_fit(self): seen.append(self.tag)
        @property
        def name(self): return 'c_' + self.tag
    Runner(cbs=[C('b', 0), C('z', 3), C('a', -3), C('c', 0)]).fit(1, tiny_learner())
    assert seen == ['a', 'b', 'c', 'z']


# ---------------------------------------------------------------------------------------------------------- correctness
def test_runner_matches_bare_pytorch_loop():
    def train(use_runner):
        learn = tiny_learner(seed=3)
        torch.manual_seed(7)
        if use_runner: Runner(cbs=[AvgStatsCallback(accuracy)]).fit(3, learn)
        else:
            m, opt = learn.model, learn.opt
            for _ in range(3):
                m.train()
                for xb, yb in learn.data.train_dl:
                    F.cross_entropy(m(xb), yb).backward(); opt.step(); opt.zero_grad()
                m.eval()
                with torch.no_grad():
                    for xb, yb in learn.data.valid_dl: m(xb)
        return weights(learn.model)
    assert all(torch.equal(a, b) for a, b in zip(train(True), train(False)))


def test_avg_stats_weighted_by_batch_size():
    learn = tiny_learner()
    x, y = torch.randn(11, 5), torch.randint(0, 3, (11,))
    dl = get_dls(Dataset(x, y), Dataset(x, y), 2)[1]                  # valid bs 4: batches of 4, 4, 3
    st = AvgStats([accuracy], False)
    class R: pass
    with torch.no_grad():
        for xb, yb in dl:
            r = R(); r.yb, r.pred = yb, learn.model(xb); r.loss = F.cross_entropy(r.pred, yb); st.accumulate(r)
        out = learn.model(x)
    assert st.count == 11
    want = [F.cross_entropy(out, y).item(), accuracy(out, y).item()]
    assert all(abs(a - b) < 1e-6 for a, b in zip(st.avg_stats, want)), (st.avg_stats, want)


def test_avg_stats_callback_history():
    run = Runner(cbs=[AvgStatsCallback(accuracy)]); run.logger = lambda *a: None
    learn = tiny_learner()
    run.fit(2, learn)
    h = run.avg_stats.history
    assert [r['epoch'] for r in h] == [0, 1]
    assert list(h[0])[:5] == ['epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy']
    with torch.no_grad():
        xs, ys = zip(*[(xb, yb) for xb, yb in learn.data.valid_dl])
        out, y = learn.model(torch.cat(xs)), torch.cat(ys)
    assert abs(h[-1]['valid_loss'] - F.cross_entropy(out, y).item()) < 1e-5
    assert abs(h[-1]['valid_accuracy'] - accuracy(out, y).item()) < 1e-6


def test_no_state_kept_after_fit():
    run = Runner(); run.fit(1, tiny_learner())
    assert run.learn is None and run.xb is None and run.pred is None and run.loss is None


# ---------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('at,value,where,msg', [
    (6, math.nan, (1, 1, True), 'loss is nan at epoch 1, batch 1 (training'),
    (3, math.inf, (0, 0, False), 'loss is inf at epoch 0, batch 0 (validation'),
    (2, -math.inf, (0, 2, True), 'loss is -inf at epoch 0, batch 2 (training')])
def test_nonfinite_loss_stops_training(at, value, where, msg):
    learn = tiny_learner(); learn.loss_func = loss_going_bad(at, value)
    log = EventLog()
    with pytest.raises(TrainingDiverged) as e: Runner(cbs=[log]).fit(2, learn)
    assert msg in str(e.value) and isinstance(e.value, FloatingPointError)
    assert (e.value.epoch, e.value.batch, e.value.in_train) == where and str(e.value.value) == str(value)
    assert log.events[-1] == 'after_fit'


def test_training_diverged_pickles():
    "A TrainingDiverged sent back from a worker process keeps its message and attributes."
    e = TrainingDiverged(math.inf, 2, 7, False)
    e2 = pickle.loads(pickle.dumps(e))
    assert (type(e2), str(e2), e2.value, e2.epoch, e2.batch, e2.in_train) == (TrainingDiverged, str(e), math.inf, 2, 7, False)


def test_nan_check_can_be_disabled():
    learn, log = tiny_learner(), EventLog(); learn.loss_func = loss_going_bad(1)
    run = Runner(cbs=[log, Recorder()], nan_check=False)
    run.fit(1, learn)                                                    # no TrainingDiverged: the run completes
    assert not hasattr(run, 'terminate_on_nan') and log.events[-2:] == ['after_epoch', 'after_fit']
    losses = run.recorder.losses
    assert len(losses) == 3 and math.isfinite(losses[0]) and math.isnan(losses[1])   # the nan loss was recorded


def test_nan_check_takes_a_guard_instance():
    class NoteNaN(TerminateOnNaNCallback):
        def begin_fit(self): self.bad = []
        def fail(self, value, epoch, batch, in_train): self.bad.append((epoch, batch, in_train))
    guard = NoteNaN()
    learn = tiny_learner(); learn.loss_func = loss_going_bad(4, math.inf)     # epoch 0, validation batch 1
    run = Runner(nan_check=guard); run.fit(1, learn)
    assert run.terminate_on_nan is guard and [type(cb) for cb in run.cbs].count(NoteNaN) == 1
    assert guard.bad == [(0, 1, False)]


def test_keyboard_interrupt_fires_after_fit_and_model_stays_usable():
    learn, log = tiny_learner(), EventLog()
    run = Runner(cbs=[log, Raiser(KeyboardInterrupt, 'after_backward', epoch=0, it=1)])
    with pytest.raises(KeyboardInterrupt): run.fit(2, learn)
    assert log.events[-3:] == ['after_loss', 'after_backward', 'after_fit']
    assert run.learn is None
    # the interrupted batch's gradients were dropped with it (batch_steps zeroes them in a finally), and fitting again works
    assert all(p.grad is None for p in learn.model.parameters())
    log2 = EventLog(); Runner(cbs=[log2]).fit(1, learn)
    assert log2.events[-1] == 'after_fit' and all(p.isfinite().all() for p in learn.model.parameters())


def test_error_in_callback_still_fires_after_fit_and_restores_logger():
    run = Runner(cbs=[TextLogger(echo=False), AvgStatsCallback(accuracy), Raiser(RuntimeError, 'after_step', epoch=0, it=1)])
    with pytest.raises(RuntimeError): run.fit(2, tiny_learner())
    assert run.logger is print


def test_unknown_event_and_bad_callbacks():
    with pytest.raises(ValueError, match="'begin_fitt'"): Runner()('begin_fitt')
    class Typo(Callback):
        def after_epcoh(self): pass
    with pytest.raises(ValueError, match='after_epcoh'): Runner(cbs=[Typo()])


def test_param_scheduler_bad_args():
    log = EventLog()
    with pytest.raises(ValueError, match="'lrr'"): Runner(cbs=[log, ParamScheduler('lrr', sched_no(1, 1))]).fit(1, tiny_learner())
    assert log.events == ['begin_fit', 'after_fit']


# ---------------------------------------------------------------------------------------------------------- schedules
def torch_lrs(make, n, base_lr=0.5):
    opt = optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr); sch = make(opt); out = []
    for _ in range(n + 1): out.append(opt.param_groups[0]['lr']); opt.step(); sch.step()
    return out


def close(a, b, eps=1e-7): return len(a) == len(b) and all(abs(x - y) <= eps + 1e-6 * abs(y) for x, y in zip(a, b))


def test_schedules_match_torch():
    n = 30; pos = [t / n for t in range(n + 1)]
    assert close([sched_cos(0.5, 0.01)(p) for p in pos], torch_lrs(lambda o: T.CosineAnnealingLR(o, T_max=n, eta_min=0.01), n))
    assert close([sched_lin(0.05, 0.5)(p) for p in pos], torch_lrs(lambda o: T.LinearLR(o, 0.1, 1.0, total_iters=n), n))
    assert close([sched_exp(0.5, 0.5 * 0.8 ** n)(p) for p in pos], torch_lrs(lambda o: T.ExponentialLR(o, 0.8), n))
    assert [sched_no(3, 9)(p) for p in (0, 0.5, 1)] == [3, 3, 3]


def test_combine_scheds_ends_and_boundaries():
    s = combine_scheds([0.3, 0.7], [sched_lin(0, 3), sched_lin(10, 17)])
    assert s(0.) == 0 and abs(s(0.15) - 1.5) < 1e-12 and s(0.3) == 10 and abs(s(1.) - 17) < 1e-12
    assert combine_scheds([1., 0.], [sched_lin(1, 2), sched_lin(5, 6)])(1.) == 2
    assert combine_scheds([0., 1.], [sched_lin(1, 2), sched_lin(5, 6)])(0.) == 5
    assert abs(combine_scheds([0.1] * 10, [sched_lin(i, i + 1) for i in range(10)])(1.) - 10) < 1e-9


def test_one_cycle_matches_torch_onecyclelr_including_last_step():
    n, pct, div, fdiv = 50, 0.3, 25., 1e4
    opt = optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sch = T.OneCycleLR(opt, max_lr=1., total_steps=n, pct_start=pct, div_factor=div, final_div_factor=fdiv,
                       anneal_strategy='cos', base_momentum=0.85, max_momentum=0.95)
    lrs, moms = [], []
    for _ in range(n): lrs.append(opt.param_groups[0]['lr']); moms.append(opt.param_groups[0]['momentum']); opt.step(); sch.step()
    p1 = (pct * n - 1) / (n - 1)
    lr_s = combine_scheds([p1, 1 - p1], cos_1cycle_anneal(1 / div, 1., 1 / div / fdiv))
    mom_s = combine_scheds([p1, 1 - p1], cos_1cycle_anneal(0.95, 0.85, 0.95))
    assert close([lr_s(t / (n - 1)) for t in range(n)], lrs) and close([mom_s(t / (n - 1)) for t in range(n)], moms)


def test_param_scheduler_per_group_and_recorder():
    learn = tiny_learner(); m = learn.model
    learn.opt = optim.SGD([{'params': [m.weight]}, {'params': [m.bias], 'lr': 0.3}], lr=0.1, momentum=0.9)
    run = Runner(cbs=[Recorder(), ParamScheduler('lr', [sched_lin(0.1, 0.2), sched_cos(0.5, 0.01)])])
    run.fit(2, learn)
    assert close(run.recorder.lrs[0], [0.1 + 0.1 * i / 6 for i in range(6)])
    assert close(run.recorder.lrs[1], torch_lrs(lambda o: T.CosineAnnealingLR(o, T_max=6, eta_min=0.01), 6)[:6])
    assert len(run.recorder.losses) == 6 and all(isinstance(l, float) and math.isfinite(l) for l in run.recorder.losses)


def test_recorder_skips_cancelled_before_loss():
    run = Runner(cbs=[Recorder(), Raiser(CancelBatchException, 'after_pred', epoch=0, it=1)])
    run.fit(1, tiny_learner())
    assert len(run.recorder.losses) == len(run.recorder.lrs[0]) == 2


# ---------------------------------------------------------------------------------------------------------- LR_Find
def test_lr_find_stops_restores_and_skips_validation():
    learn = tiny_learner(); w0 = weights(learn.model)
    log = EventLog()
    run = Runner(cbs=[log, LR_Find(max_iter=5), Recorder()])
    run.fit(10, learn)
    lrs = run.recorder.lrs[0]
    assert len(lrs) == 5 and close(lrs, [1e-6 * 1e7 ** (i / 4) for i in range(5)], eps=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(weights(learn.model), w0))
    assert learn.opt.param_groups[0]['lr'] == 0.1
    assert 'after_cancel_epoch' in log.events and log.events[-2:] == ['after_cancel_train', 'after_fit']
    assert log.events.count('begin_validate') == log.events.count('after_cancel_epoch')


def test_lr_find_stops_on_exploding_loss_without_nan_error():
    learn = tiny_learner(); learn.loss_func = loss_going_bad(2)
    run = Runner(cbs=[LR_Find(max_iter=50), Recorder()]); run.fit(10, learn)
    assert len(run.recorder.losses) == 2


# ---------------------------------------------------------------------------------------------------------- logging
def test_progress_callback_forced_display(capsys):
    run = Runner(cbs=[ProgressCallback(show=True), AvgStatsCallback(accuracy)])
    run.fit(2, tiny_learner())
    assert run.logger is print
    out = capsys.readouterr().out
    assert 'train_loss' in out and 'valid_accuracy' in out
    run = Runner(cbs=[ProgressCallback(show=True), AvgStatsCallback(accuracy), Raiser(RuntimeError, 'after_step', epoch=0)])
    with pytest.raises(RuntimeError): run.fit(1, tiny_learner())
    assert run.logger is print


def test_progress_callback_headless_keeps_print(capsys):
    run = Runner(cbs=[ProgressCallback(show=False), AvgStatsCallback(accuracy)])
    run.fit(1, tiny_learner())
    assert capsys.readouterr().out.splitlines()[0].split()[0] == 'epoch'


def test_text_logger_file():
    with tempfile.TemporaryDirectory() as d:
        fn = Path(d) / 'log.txt'
        run = Runner(cbs=[TextLogger(fn, echo=False), AvgStatsCallback(accuracy)])
        run.fit(3, tiny_learner())
        lines = fn.read_text().splitlines()
    assert len(lines) == 4 and lines[0].split()[:2] == ['epoch', 'train_loss'] and lines[3].split()[0] == '2'
    assert run.logger is print


# ------------------------------------------------------------------------ moved from notebooks
# Edge cases and regressions of notebooks 04 and 05 that are not their lesson.
def test_camel2snake_and_listify_edge_cases():
    assert camel2snake('HTTPServer2Go') == 'http_server2_go'
    assert camel2snake('recorder') == 'recorder'
    assert listify(range(3)) == [0, 1, 2]
    l = [1, 2]
    assert listify(l) is not l and listify(l) == l          # a copy


def test_callback_attribute_fallthrough_and_default_name():
    cb = Callback()
    assert cb.name == 'callback'
    with pytest.raises(AttributeError, match='no_such_attr'): cb.no_such_attr    # no runner yet
    cb.set_runner(SimpleNamespace(epoch=3))
    assert cb.epoch == 3
    with pytest.raises(AttributeError, match='no_such_attr'): cb.no_such_attr


def test_callback_host_caches_handlers_and_refuses_bad_names():
    class Tally(Callback):
        order = 1
        def __init__(self): self.n = 0
        def begin_fit(self): self.n += 1
    host = nb04.CallbackHost([Tally(), nb04.TrainEvalCallback()])
    assert host.handlers('after_batch') is host.handlers('after_batch')          # cached...
    host('begin_fit')
    host.add_cbs(Tally())                                                        # ...and rebuilt
    host('begin_fit')
    assert [cb.n for cb in host.cbs if isinstance(cb, Tally)] == [2, 1]
    class AddCbsCallback(Callback): pass
    with pytest.raises(ValueError, match="'add_cbs' would hide"): host.add_cbs(AddCbsCallback())
    class LossCallback(Callback): pass
    with pytest.raises(ValueError, match="'loss' would hide"): Runner(cbs=[LossCallback()])
    class Fastai(Callback): _order = 10
    with pytest.raises(ValueError, match='`_order`'): Runner(cbs=[Fastai()])


def test_progress_counters_and_metric_names():
    run = Runner(cbs=[AvgStatsCallback(accuracy)])
    run.logger = lambda *a: None
    run.fit(3, tiny_learner())
    assert (run.n_iter, run.n_epochs) == (9, 3.0)
    assert (run.avg_stats.train_stats.count, run.avg_stats.valid_stats.count) == (12, 16)
    assert nb04.metric_name(partial(accuracy)) == 'accuracy'
    assert AvgStats([partial(accuracy)], True).names == ['loss', 'accuracy']


def test_annealer_keeps_name_and_makes_schedules():
    assert sched_cos.__name__ == 'sched_cos'
    @nb05.annealer
    def sched_sq(start, end, pos): return start + pos ** 2 * (end - start)
    assert [sched_sq(1, 3)(p) for p in (0, 0.5, 1)] == [1, 1.5, 3]
    three = [sched_no(1, 1), sched_no(9, 9), sched_no(3, 3)]
    assert combine_scheds([0.5, 0., 0.5], three)(0.5) == 3      # empty middle phase


def test_param_scheduler_two_hypers_and_exp_per_group():
    learn = tiny_learner()
    m = learn.model
    groups = [{'params': [m.weight]}, {'params': [m.bias], 'lr': 0.3}]
    learn.opt = optim.SGD(groups, lr=0.1, momentum=0.9)
    run = Runner(cbs=[Recorder(), ParamScheduler('lr', [sched_lin(0.1, 0.2), sched_exp(1., 0.01)]),
                      ParamScheduler('momentum', sched_cos(0.95, 0.85))])
    run.fit(2, learn)
    assert close(run.recorder.lrs[1], [0.01 ** (i / 6) for i in range(6)])
    assert abs(learn.opt.param_groups[0]['momentum'] - sched_cos(0.95, 0.85)(5 / 6)) < 1e-9


def test_nan_guard_reports_first_value_and_is_installed_first():
    r = SimpleNamespace(epoch=2, iter=7, in_train=False, loss=torch.tensor([-math.inf, 1.]))
    cb = TerminateOnNaNCallback()
    cb.set_runner(r)
    assert (cb.name, cb.order) == ('terminate_on_nan', -10)
    with pytest.raises(TrainingDiverged, match=r'loss is -inf at epoch 2, batch 7 \(validation'):
        cb.after_loss()
    names = [type(cb).__name__ for cb in Runner().cbs]
    assert names == ['TrainEvalCallback', 'TerminateOnNaNCallback']
    assert [type(cb).__name__ for cb in Runner(nan_check=False).cbs] == ['TrainEvalCallback']


def test_cancelled_batch_drops_its_gradient():
    "A batch cancelled after its backward pass: the weights are SGD's on the other batches."
    class KeepBatches(Callback):
        def begin_fit(self): self.seen = []
        def begin_batch(self):
            if self.in_train: self.seen.append((self.xb, self.yb))
    learn, keep = tiny_learner(), KeepBatches()
    Runner(cbs=[keep, Raiser(CancelBatchException, 'after_backward', epoch=0, it=1)]).fit(1, learn)
    ref = tiny_learner()
    for xb, yb in (keep.seen[0], keep.seen[2]):
        F.cross_entropy(ref.model(xb), yb).backward()
        ref.opt.step()
        ref.opt.zero_grad()
    for a, b in zip(weights(learn.model), weights(ref.model)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_cancel_exceptions_are_not_errors_callers_catch():
    "`except ValueError` or `except RuntimeError` around a fit must not swallow a cancellation."
    for e in (nb05.CancelTrainException, nb05.CancelEpochException, CancelBatchException):
        assert issubclass(e, Exception) and not issubclass(e, (ValueError, RuntimeError)) and e.__doc__
