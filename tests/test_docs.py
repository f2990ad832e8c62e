"The website's builder (.ci/docs.py) without the docs tools: its link checker and page staging."
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('site_docs', ROOT / '.ci' / 'docs.py')
docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)

GOOD = '''<html><head><link href="assets/s.css" rel="stylesheet">
<script src="/assets/s.js"></script></head><body id="top">
<a href="a.html">a</a> <a href="a.html#sec">a's section</a> <a href="#top">up</a>
<a href="sub/">sub</a> <img src="img/p.png"> <img src="data:image/png;base64,AAAA">
<a href="a.html?v=1">query</a> <a href="https://example.org/x.html">out</a>
<a href="mailto:x@y.z">mail</a> <a href="//cdn.x/y.js">cdn</a>
</body></html>'''


def make_site(root, index=GOOD):
    "A tiny site: index.html (given), a.html with an id `sec`, sub/index.html, an image, css, js."
    site = Path(root) / 'site'
    files = {'index.html': index, 'a.html': '<h2 id="sec">S</h2>', 'sub/index.html': '<p>',
             'img/p.png': 'png', 'assets/s.css': '', 'assets/s.js': ''}
    for f, text in files.items():
        (site / f).parent.mkdir(parents=True, exist_ok=True)
        (site / f).write_text(text, encoding='utf-8')
    return site


def test_links_good_site_passes(tmp_path):
    assert docs.check_links(make_site(tmp_path)) == []


def test_links_each_broken_kind_fails(tmp_path):
    (tmp_path / 'outside.html').write_text('<p>')   # exists, but not in the site
    broken = {'<a href="gone.html">': 'no such file',
              '<img src="img/missing.png">': 'no such file',
              '<a href="a.html#nope">': "no id 'nope'",
              '<a href="#nope">': "no id 'nope'",
              '<a href="../outside.html">': 'no such file',
              '<link href="/assets/x.css">': 'no such file'}
    for tag, why in broken.items():
        site = make_site(tmp_path, GOOD.replace('</body>', tag + '</body>'))
        bad = docs.check_links(site)
        assert len(bad) == 1 and bad[0].startswith('index.html: ') and why in bad[0], (tag, bad)


def test_chapters_follow_the_chain_and_mark_engineering():
    chain = '00 00a 00b 01 02 03 04 05 05a 06 06a 07 08 08a 08b 09 09a 09b 09c 10 10a'.split()
    chaps = docs.chapters()
    assert [num for _, num, _ in chaps] == chain
    labels = {num: docs.nav_label(num, title) for _, num, title in chaps}
    assert labels['05'] == '05 · Annealing, cancellation and the final Runner'
    assert labels['10a'] == '10a · Train (engineering)'
    marked = [n for n, label in labels.items() if label.endswith('(engineering)')]
    assert marked == [n for n in chain if n[-1].isalpha()]


def test_headings_code_becomes_html_outside_fences():
    md = ('## `train` and `resume_train`\ntext `x`\n```python\n# a `comment`\n```\n'
          '### What runs: `resolve`\n')
    assert ''.join(docs.headings_code_to_html(md)) == (
        '## <code>train</code> and <code>resume_train</code>\ntext `x`\n'
        '```python\n# a `comment`\n```\n### What runs: <code>resolve</code>\n')


def test_repeated_heading_ids_become_unique():
    h = ('<h2 id="d">D<a class="anchor-link" href="#d">¶</a></h2><p>x</p>'
         '<h3 id="d">D<a class="anchor-link" href="#d">¶</a></h3>'
         '<h3 id="e">E<a class="anchor-link" href="#e">¶</a></h3>')
    out = docs._unique_heading_ids(h)
    assert out.count('id="d"') == 1 and 'id="d_1">D<a class="anchor-link" href="#d_1"' in out
    assert 'id="e">E<a class="anchor-link" href="#e"' in out


def test_home_page_links_the_notebook_table():
    row = '| 05a | `05a_checkpoints` | *engineering:* `CheckpointCallback` | synthetic | 1 s |'
    out = docs.home_page(f'text `05a_checkpoints`\n{row}\n')
    assert out == ('text `05a_checkpoints`\n| 05a | [`05a_checkpoints`](05a_checkpoints.ipynb)'
                   ' | *engineering:* `CheckpointCallback` | synthetic | 1 s |\n')
