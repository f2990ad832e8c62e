#!/usr/bin/env python3
"""Build the course's website into _docs/ with mkdocs-material and mkdocs-jupyter (`dev.py docs`).

Usage: python .ci/docs.py [--mkdocs PYTHON] [--check] [--no-shots]
  (no option)  stage README.md (the home page), every nbs/*.ipynb with its saved outputs (nothing
               is executed) and a reference of the exported names (this imports `exp`) into
               build/docs/, then `mkdocs build` into _docs/ with PYTHON, which has the docs tools
  --check      then check every relative link and image of the site and, when Debian's `chromium`
               is on the PATH, screenshot the home page and three chapters into _docs/_shots/
  --no-shots   with --check: the links only (CI)
The link checker (`check_links`) needs only the standard library: tests/test_docs.py runs it.
"""
import ast, configparser, importlib, inspect, json, os, re, shutil, subprocess, sys, tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / 'build' / 'docs'
CSS = '.md-grid { max-width: 1600px; }\n'
# A chapter's page gets a button that downloads its notebook (mkdocs-jupyter copies it there).
MAIN_HTML = '''{% extends "base.html" %}
{% block content %}
{% if page.file.src_uri.endswith(".ipynb") %}
<a href="{{ page.file.src_uri }}" download title="Download the notebook"
   class="md-content__button md-icon">
{% include ".icons/material/download.svg" %}</a>
{% endif %}
{{ super() }}
{% endblock content %}
'''
SHOTS = ('index', '05_anneal', '08_data_block', '10_bag_of_tricks')


# ------------------------------------------------------------------------------- link checker
class _Refs(HTMLParser):
    "The links and images of one page (`refs`) and the fragment ids it defines (`ids`)."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k == 'id' or (tag == 'a' and k == 'name'): self.ids.add(v)
            if k in ('href', 'src') and v is not None: self.refs.append(v)


def _parse(path):
    p = _Refs()
    p.feed(path.read_text(encoding='utf-8', errors='replace'))
    return p


def _is_external(ref):
    "True for a link the site does not hold: a scheme (https:, data:, ...) or a host (//cdn...)."
    return bool(urlsplit(ref).scheme) or ref.startswith('//')


def check_links(site):
    "Each relative href/src of the pages in `site` naming no file there (or no id in it)."
    site = Path(site).resolve()
    pages = {p: _parse(p) for p in sorted(site.rglob('*.html'))}
    bad = []
    for page, refs in pages.items():
        for ref in refs.refs:
            if _is_external(ref) or not ref.strip(): continue
            parts = urlsplit(ref)
            base = site if parts.path.startswith('/') else page.parent
            target = (base / unquote(parts.path).lstrip('/')).resolve() if parts.path else page
            if target.is_dir(): target = target / 'index.html'
            where = f'{page.relative_to(site)}: {ref}'
            frag = unquote(parts.fragment)
            if not target.is_relative_to(site) or not target.is_file():
                bad.append(f'{where} (no such file)')
            elif frag and target in pages and frag not in pages[target].ids:
                bad.append(f'{where} (no id {frag!r} in {target.relative_to(site)})')
    return bad


# ------------------------------------------------------------------------------- pages
def chapters(nbs=ROOT / 'nbs'):
    "(stem, number, title) of every notebook, in the chain order (the file names sort in it)."
    out = []
    for p in sorted(Path(nbs).glob('[0-9]*.ipynb')):
        cells = json.loads(p.read_text(encoding='utf-8'))['cells']
        head = next(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
        title = head.splitlines()[0].lstrip('# ').split(' — ', 1)[-1]
        out.append((p.stem, p.stem.split('_')[0], title))
    return out


def nav_label(num, title):
    "A chapter's entry in the navigation: engineering chapters (lettered numbers) are marked."
    short = title.split(':')[0]
    return f'{num} · {short}' + (' (engineering)' if num[-1].isalpha() else '')


def home_page(readme):
    "The README as the home page, each notebook name in its table linked to its chapter."
    return re.sub(r'^\| (\w+) \| `(\1_\w+)` \|', r'| \1 | [`\2`](\2.ipynb) |', readme,
                  flags=re.M)


def headings_code_to_html(md):
    "Markdown `md` with the `code` spans of its headings as <code> tags (fenced code unchanged)."
    out, fenced = [], False
    for line in md.splitlines(keepends=True):
        if line.lstrip().startswith('```'): fenced = not fenced
        heading = not fenced and re.match(r'#{1,6} ', line)
        out.append(re.sub(r'`([^`]+)`', r'<code>\1</code>', line) if heading else line)
    return out


def stage_notebook(nb, dest):
    "Copy notebook `nb` into `dest` without its `default_exp` cell, headings' code as <code>."
    # mkdocs-jupyter 0.26 drops `code` from its table of contents, whose links then miss the ids.
    d = json.loads(nb.read_text(encoding='utf-8'))
    d['cells'] = [c for c in d['cells'] if not ''.join(c['source']).startswith('#| default_exp')]
    for c in d['cells']:
        if c['cell_type'] == 'markdown': c['source'] = headings_code_to_html(''.join(c['source']))
    (dest / nb.name).write_text(json.dumps(d, indent=1, ensure_ascii=False), encoding='utf-8')


def _exports(mod):
    "The names a module exports itself: the first `__all__` in its source (reexport adds more)."
    tree = ast.parse(Path(mod.__file__).read_text(encoding='utf-8'))
    for node in tree.body:
        names = [getattr(t, 'id', '') for t in getattr(node, 'targets', [])]
        if '__all__' in names: return ast.literal_eval(node.value)
    return []


def _own_doc(obj):
    "The docstring `obj` has itself (not one inherited from a base class)."
    doc = vars(obj).get('__doc__') if isinstance(obj, type) else getattr(obj, '__doc__', None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ''


def _signature(name, obj):
    try: return f'{name}{inspect.signature(obj)}'
    except (TypeError, ValueError): return name


def _entry(name, obj):
    "One exported name as Markdown: signature or value, docstring, a class's own public methods."
    home = getattr(obj, '__module__', None) or ''
    if not callable(obj):
        value = repr(obj)
        value = value if len(value) <= 90 else value[:87] + '...'
        return [f'### `{name}`', '', '```python', f'{name} = {value}', '```', '']
    kind = 'class' if isinstance(obj, type) else 'def'
    lines = [f'### `{name}`', '', '```python', f'{kind} {_signature(name, obj)}', '```', '']
    doc = _own_doc(obj)
    if not home.startswith('exp.'): doc = f'From `{home}`. ' + doc.split('\n\n')[0]
    lines += [doc, ''] if doc else []
    if kind == 'class' and home.startswith('exp.'):
        meths = [(k, _own_doc(v)) for k, v in vars(obj).items()
                 if not k.startswith('_') and inspect.isfunction(v)]
        lines += [f'- `{k}`' + (f': {d.splitlines()[0]}' if d else '') for k, d in meths] + ['']
    return lines


def reference_page(chaps):
    "Markdown for every exported name, module by module in the chain order."
    sys.path.insert(0, str(ROOT))
    lines = ['# Reference', '',
             'Every name each module exports, in the chain order. Each module star-imports the one '
             'before it, so `from exp.nb_10a import *` holds them all; each heading links to the '
             'chapter that builds the module.', '']
    for stem, num, title in chaps:
        mod = importlib.import_module(f'exp.nb_{num}')
        lines += [f'## `exp.nb_{num}` — [{num} {title}]({stem}.ipynb)', '']
        names = _exports(mod)
        mods = [n for n in names if inspect.ismodule(getattr(mod, n))]
        if mods: lines += [f'It also exports the modules {", ".join(f"`{n}`" for n in mods)}.', '']
        for n in names:
            if n not in mods: lines += _entry(n, getattr(mod, n))
    return '\n'.join(lines) + '\n'


def _settings():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']


def stage(dest=STAGE):
    "Write the pages and the mkdocs config (mkdocs.yml + nav and paths) into `dest`: its path."
    shutil.rmtree(dest, ignore_errors=True)
    src = dest / 'src'
    src.mkdir(parents=True)
    chaps = chapters()
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    (src / 'index.md').write_text(home_page(readme), encoding='utf-8')
    for stem, _, _ in chaps: stage_notebook(ROOT / 'nbs' / f'{stem}.ipynb', src)
    (src / 'reference.md').write_text(reference_page(chaps), encoding='utf-8')
    (src / 'extra.css').write_text(CSS, encoding='utf-8')
    (dest / 'overrides').mkdir()
    (dest / 'overrides' / 'main.html').write_text(MAIN_HTML, encoding='utf-8')
    s = _settings()
    cfg = {'INHERIT': str(ROOT / 'mkdocs.yml'), 'theme': {'custom_dir': str(dest / 'overrides')},
           'site_url': s['doc_host'].rstrip('/') + '/' + s['doc_baseurl'].strip('/'),
           'docs_dir': str(src), 'site_dir': str(ROOT / s['doc_path']),
           'nav': [{'Home': 'index.md'},
                   {'Chapters': [{nav_label(num, t): f'{stem}.ipynb'} for stem, num, t in chaps]},
                   {'Reference': 'reference.md'}]}
    path = dest / 'mkdocs.yml'
    path.write_text(json.dumps(cfg, indent=1, ensure_ascii=False), encoding='utf-8')  # YAML too
    return path


def _unique_heading_ids(html):
    "Repeated heading ids made unique as the TOC makes them (x, x_1, ...); nbconvert repeats them."
    seen = {}
    def _one(m):
        n = seen[m[2]] = seen.get(m[2], -1) + 1
        new = m[2] if n == 0 else f'{m[2]}_{n}'
        return f'{m[1]}id="{new}"{m[3]}href="#{new}"'
    pattern = r'(<h[1-6] )id="([^"]+)"(>.*?<a class="anchor-link" )href="#\2"'
    return re.sub(pattern, _one, html, flags=re.S)


def build(mkdocs_python):
    "Stage the pages, run `mkdocs build` with the Python that has the docs tools: the site folder."
    t0 = time.time()
    cmd = [str(mkdocs_python), '-m', 'mkdocs', 'build', '--clean', '-q', '-f', str(stage())]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, NO_MKDOCS_2_WARNING='1'))
    if r.returncode: sys.exit(f'[docs] mkdocs build failed ({r.returncode})')
    site = ROOT / _settings()['doc_path']
    for stem, _, _ in chapters():
        page = site / f'{stem}.html'
        page.write_text(_unique_heading_ids(page.read_text(encoding='utf-8')), encoding='utf-8')
    print(f'[docs] built {site.relative_to(ROOT)}/ in {time.time() - t0:.0f}s')
    return site


def first_plot_cell(html):
    "The id of the notebook cell holding a page's first image output (a plot), or ''."
    img = re.search(r'<img [^>]*src="data:image/', html)
    ids = re.findall(r'<div [^>]*id="(cell-id=[^"]+)"', html[:img.start()]) if img else []
    return ids[-1] if ids else ''


def _shot(exe, url, png, tmp):
    "A 1280x2000 screenshot of `url` in a frame (headless Chromium draws a scrolled page blank)."
    frame = Path(tmp) / 'frame.html'
    style = 'width:1280px;height:2000px;border:0'
    html = f'<body style="margin:0"><iframe src="{url}" style="{style}">'
    frame.write_text(html, encoding='utf-8')
    cmd = [exe, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
           '--window-size=1280,2000', f'--screenshot={png}', frame.as_uri()]
    try: r = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired: return False
    return r.returncode == 0 and png.is_file()


def shots(site):
    "Screenshots of the home page and three chapters (at a plot) with Debian's `chromium`."
    exe = shutil.which('chromium')
    if not exe: return print('[docs] screenshots skipped: no `chromium` (apt-get install chromium)')
    out = site / '_shots'
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in SHOTS:
            page = site / f'{name}.html'
            url = page.as_uri() + '#' + first_plot_cell(page.read_text(encoding='utf-8'))
            if not _shot(exe, url.rstrip('#'), out / f'{name}.png', tmp):
                return print(f'[docs] screenshots skipped: chromium failed on {name}.html')
    print(f'[docs] screenshots: {", ".join(f"{out.relative_to(ROOT)}/{n}.png" for n in SHOTS)}')


def main(args):
    py = args[args.index('--mkdocs') + 1] if '--mkdocs' in args else sys.executable
    site = build(py)
    if '--check' not in args: return
    missing = [f'{s}.html' for s, _, _ in chapters() if not (site / f'{s}.html').is_file()]
    bad = check_links(site) + [f'no page {m} for its notebook' for m in missing]
    if bad: sys.exit('[docs] broken links:\n  ' + '\n  '.join(bad))
    n = len(list(site.rglob('*.html')))
    print(f'[docs] links: every relative link and image of the {n} pages resolves')
    if '--no-shots' not in args: shots(site)


if __name__ == '__main__': main(sys.argv[1:])
