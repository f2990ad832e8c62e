"The staleness check of saved notebook outputs (.ci/nb_hash.py, used by `dev.py test` and `dev.py notebooks`)."
import json, subprocess, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / '.ci'))
from nb_hash import RECORD, code_hash, stale


def _nb(path, code, md='# A chapter'):
    cells = [dict(cell_type='markdown', id='m0', metadata={}, source=md)]
    cells += [dict(cell_type='code', id=f'c{i}', metadata={}, source=s, outputs=[], execution_count=None)
              for i, s in enumerate(code)]
    path.write_text(json.dumps(dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5)))
    return path


def test_stale_names_notebooks_whose_code_changed(tmp_path):
    a = _nb(tmp_path / '01_a.ipynb', ['x = 1', 'print(x)'])
    b = _nb(tmp_path / '02_b.ipynb', ['y = 2'])
    assert stale(tmp_path) == ['01_a.ipynb', '02_b.ipynb']          # nothing recorded yet
    (tmp_path / RECORD).write_text(json.dumps({p.name: code_hash(p) for p in (a, b)}))
    assert stale(tmp_path) == []
    _nb(a, ['x = 1', 'print(x)'], md='# Reworded prose')               # prose and outputs do not count
    assert stale(tmp_path) == []
    _nb(b, ['y = 3'])
    assert stale(tmp_path) == ['02_b.ipynb']


def test_exec_nb_records_the_hash_of_what_it_ran(tmp_path):
    nbs = tmp_path / 'nbs'
    nbs.mkdir()
    nb = _nb(nbs / '01_a.ipynb', ['x = 6 * 7', 'x', 'y = 1'])
    cells = json.loads(nb.read_text())
    cells['cells'][3]['outputs'] = [dict(output_type='stream', name='stdout', text='an older run printed this')]
    nb.write_text(json.dumps(cells))
    ci = Path(__file__).resolve().parents[1] / '.ci' / 'exec_nb.py'
    r = subprocess.run([sys.executable, str(ci), str(nb)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert stale(nbs) == []
    out = json.loads(nb.read_text())['cells'][2]['outputs']
    assert out and '42' in json.dumps(out)
    assert json.loads(nb.read_text())['cells'][3]['outputs'] == []                  # nothing stale is kept
