"""Edge cases of notebook 00's test helpers and `reexport`, moved out of the chapter.

The chapter's cells keep one test of each helper, right after it."""
import types
import numpy as np
import pytest
import torch
from torch import tensor
import exp.nb_00 as E   # an alias: a star import would make pytest collect the test_* helpers


def _boom(): raise ValueError('bad input: x')


def test_test_fail_messages():
    with pytest.raises(AssertionError, match='none was raised'): E.test_fail(lambda: 1)
    with pytest.raises(AssertionError, match=r"raised ValueError\(bad input: x\), without 'other'"):
        E.test_fail(_boom, contains='other')


def test_equals_edge_cases():
    E.test_eq(1 + 1, 2)
    E.test_ne('a', 'b')
    E.test_fail(lambda: E.test_eq(np.zeros(3), np.zeros(4)))          # arrays: shape counts too
    assert E.equals({'a': [1, 2]}, {'a': [1, 2]}) and not E.equals({'a': 1}, {'b': 1})
    assert not E.equals([1, 2], [1, 2, 3])


def test_close_edge_cases():
    E.test_close([tensor(1.), tensor(2.)], tensor([1., 2.]))            # a list of tensors
    E.test_fail(lambda: E.test_close(float('nan'), float('nan')))       # NaN is never near
    E.test_eq(E._to_float64([tensor(1), tensor(2.5)]), tensor([1., 2.5], dtype=torch.float64))
    E.test_eq(E._to_float64(3).dtype, torch.float64)


def test_reexport_without_all_and_unknown_module():
    prev = types.ModuleType('prev')
    prev.__all__ = ['a', 'b']
    g = {}
    E.reexport(g, prev)
    assert '__all__' not in g                                           # a notebook: nothing to do
    with pytest.raises(ModuleNotFoundError, match='no_such_module'):
        E.reexport({'__all__': []}, 'exp.no_such_module')
