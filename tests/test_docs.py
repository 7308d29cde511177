"""The guide's promises hold: every command quoted in docs/guide.md, docs/results.md and docs/zh/ runs, and every
figure they show exists and is one that ``scripts/make_figures.py`` produces.

How each quoted command is checked, within this file's budget (one shared CPU):

* ``python benchmarks/convergence/X.py ...``: its ``main`` runs with the quoted flags plus ``--dry-run`` (a few
  optimiser steps per run) and must write its JSON. The benchmarks themselves take minutes to hours and are never
  run here (docs/results.md).
* ``rnnlab gradflow|compare ...``: the real CLI parses the quoted flags and builds and validates the command's
  config; the report-writing function is replaced by that validation (the commands' own tests run them).
* ``python scripts/make_samples.py ...``: its flags are parsed (the run trains for minutes; its result is committed).
* ``python scripts/make_figures.py ...``: ``--list`` runs as is; other flags are parsed with a figure drawn from a
  committed benchmark JSON. One measured guide figure is computed at a tiny size in a separate test.
* ``make figures``: the Makefile target must call the script.

Commands run in-process to avoid paying Python and torch start-up for each.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "guide.md", ROOT / "docs" / "results.md", *sorted((ROOT / "docs" / "zh").glob("*.md"))]
FIGURE_REF = re.compile(r"\]\((?:\.\./)?figures/([\w\-]+)\.png\)")
FENCE = re.compile(r"```bash\n(.*?)```", re.S)

# For each rnnlab command the docs quote: (module, report function to replace, how to validate its config).
RNNLAB_CHECKS = {
    "gradflow": ("rnnlab.commands.gradflow", "run_gradflow", lambda cfg: cfg.validate()),
    "compare": ("rnnlab.commands.compare", "run_compare", lambda cfg: cfg.resolved()),
}


_MODULES: dict[Path, ModuleType] = {}


def _load(path: Path) -> ModuleType:
    """Import a script by path, once per test session (so caches inside it, like MNIST-1D's data, are shared)."""
    if path in _MODULES:
        return _MODULES[path]
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    _MODULES[path] = module
    return module


def doc_commands() -> list[tuple[str, str]]:
    """``(doc file, command)`` for every line of every bash block of the docs (comments and blanks skipped)."""
    out = []
    for doc in DOCS:
        if not doc.is_file():
            continue
        for block in FENCE.findall(doc.read_text(encoding="utf-8")):
            for line in block.splitlines():
                cmd = line.split("#")[0].strip()
                if cmd:
                    out.append((doc.relative_to(ROOT).as_posix(), cmd))
    return out


def figure_refs() -> list[tuple[str, str]]:
    return [(doc.relative_to(ROOT).as_posix(), name) for doc in DOCS if doc.is_file()
            for name in FIGURE_REF.findall(doc.read_text(encoding="utf-8"))]


def test_docs_exist_and_quote_commands():
    assert (ROOT / "docs" / "guide.md").is_file() and (ROOT / "docs" / "zh" / "guide.md").is_file()
    cmds = [c for _, c in doc_commands()]
    assert any(c.startswith("python benchmarks/convergence/adding.py --quick") for c in cmds)
    assert any(c.startswith("make figures") for c in cmds)


@pytest.mark.parametrize("doc,name", sorted(set(figure_refs())))
def test_figure_exists_and_is_made_by_the_script(doc, name):
    figures = _load(ROOT / "scripts" / "make_figures.py")
    assert name in figures.FIGURES, f"{doc} shows figures/{name}.png, which scripts/make_figures.py does not make"
    path = ROOT / "docs" / "figures" / f"{name}.png"
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} missing or not a PNG"


def test_every_figure_of_the_script_is_used():
    used = {name for _, name in figure_refs()}
    figures = _load(ROOT / "scripts" / "make_figures.py")
    assert set(figures.FIGURES) <= used, f"figures made but never shown: {sorted(set(figures.FIGURES) - used)}"


def test_figure_script_measures_what_the_guide_says(tmp_path):
    """The measurement behind a guide claim, at a small size: W_hh = rho * Q with rho < 1 and small inputs decays
    like rho^k (section 2)."""
    import torch

    figures = _load(ROOT / "scripts" / "make_figures.py")
    x, y = figures.adding_batch(30, 4, torch.Generator().manual_seed(0))
    model = figures._LastStep(figures._scaled_rnn("tanh", 0.7, 16, seed=0), 16)
    g = figures._relative(figures._profile(model, 0.01 * x, y).by_distance(0))  # (31,)
    rate = float(g[20] / g[10]) ** (1 / 10)
    assert 0.65 < rate <= 0.7 + 1e-3, rate  # tanh' <= 1 can only make it faster than rho


def _close(made, committed, where: str) -> None:
    """Recursively compare two figures' data: same structure and strings, numbers within 2% (relative; 1e-30
    absolute, and a gap against a value below 1e-25, for gradients at the edge of float32's range). 2% is about one pixel on the figures' log axes: the data must agree to
    what a reader can see, not to the last bit, because float32 sums differ across CPUs and MKL code paths."""
    import math

    if isinstance(committed, dict):
        assert isinstance(made, dict) and made.keys() == committed.keys(), f"{where}: keys differ"
        for k in committed:
            _close(made[k], committed[k], f"{where}.{k}")
    elif isinstance(committed, list):
        assert isinstance(made, list) and len(made) == len(committed), f"{where}: length {len(made)} != {len(committed)}"
        for i, (a, b) in enumerate(zip(made, committed)):
            _close(a, b, f"{where}[{i}]")
    elif isinstance(committed, float) or isinstance(made, float):
        if made is None or committed is None:  # a gradient that underflowed float32 on one machine (drawn as a gap)
            assert abs(made if made is not None else committed) < 1e-25, f"{where}: {made} vs {committed}"
            return
        assert math.isclose(made, committed, rel_tol=2e-2, abs_tol=1e-30), f"{where}: {made} vs {committed}"
    else:
        assert made == committed, f"{where}: {made!r} vs {committed!r}"


@pytest.mark.slow
def test_make_figures_reproduces_the_committed_figures(tmp_path):
    """Regenerating every figure gives the committed figures' data (docs/figures/<name>.json: every plotted line,
    every text, every measured number) within the tolerance of :func:`_close`. PNG bytes are not compared: they
    change with the CPU, the fonts and matplotlib's version while the figure says the same thing."""
    import json

    figures = _load(ROOT / "scripts" / "make_figures.py")
    assert figures.main(["--out", str(tmp_path)]) == 0
    for name in figures.FIGURES:
        made = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        committed = json.loads((ROOT / "docs" / "figures" / f"{name}.json").read_text(encoding="utf-8"))
        _close(made, committed, name)


def test_every_figure_has_its_data():
    import json

    figures = _load(ROOT / "scripts" / "make_figures.py")
    for name in figures.FIGURES:
        data = json.loads((ROOT / "docs" / "figures" / f"{name}.json").read_text(encoding="utf-8"))
        assert data["panels"], f"{name}.json has no panels"


def test_pages_quote_the_committed_json():
    """One source for every number: each page quotes, in the form the script formats it, every number that
    ``make_figures.QUOTES`` assigns to it, computed from the committed JSON (figure data, benchmark results, the
    samples run). A rerun that moves a number fails here until the text follows."""
    figures = _load(ROOT / "scripts" / "make_figures.py")
    numbers = figures.quoted_numbers()
    for page, keys in figures.QUOTES.items():
        text = (ROOT / page).read_text(encoding="utf-8")
        missing = {k: numbers[k] for k in keys if numbers[k] not in text}
        assert not missing, f"{page} does not quote {missing} (see python scripts/make_figures.py --numbers)"


# Numbers and messages that were wrong or not comparable, and must not come back: (page, text, why).
STALE = [
    ("README.md", "2.47", "the bigram on tiny-shakespeare; ours on this split is in results.md"),
    ("README.md", "published at 1.88", "nanoGPT on another split"),
    ("docs/training.md", "bigram 2.47", "the bigram on tiny-shakespeare"),
    ("docs/guide.md", "1e-20` times smaller", "1e20 times smaller"),
    ("docs/guide.md", "halves at every step.", "the measured rate is about 0.64"),
    ("docs/guide.md", "a few hundred steps sooner", "results.md: 1,300 and 600"),
    ("docs/guide.md", "trains stably", "the clipped run learns nothing"),
    ("docs/zh/guide.md", "挤压函数", "a calque"), ("docs/zh/guide.md", "长时滞", "长程依赖"),
    ("docs/zh/guide.md", "沿时间的反向传播", "随时间反向传播"), ("docs/zh/guide.md", "去除每一步", "除以"),
    ("docs/zh/guide.md", "不再是有限数", "inf/NaN"), ("docs/zh/guide.md", "完全相同的数值", "agreement is ~1e-7"),
    ("docs/zh/guide.md", "除本页外均为英文", "zh/results.md exists"),
    ("docs/robustness.md", "expected one of ['lstm', 'gru', 'rnn_tanh', 'rnn_relu']`", "the message lists the variants"),
]


@pytest.mark.parametrize("page,text,why", STALE)
def test_stale_text_is_gone(page, text, why):
    assert text not in (ROOT / page).read_text(encoding="utf-8"), f"{page} still says {text!r} ({why})"


def test_the_blog_loop_fails_with_and_without_retain_graph():
    """Section 5: the blog's loop raises at the second backward, and retain_graph=True does not rescue it (the
    optimizer step between the two backward passes modified the weights the old graph saved)."""
    figures = _load(ROOT / "scripts" / "make_figures.py")
    assert "backward through the graph a second time" in figures.blog_loop_error()
    assert "modified by an inplace operation" in figures.blog_loop_error(retain_graph=True)


def test_makefile_figures_target_runs_the_script():
    text = (ROOT / "Makefile").read_text()
    target = re.search(r"^figures:.*\n((?:\t.*\n)+)", text, re.M)
    assert target and "scripts/make_figures.py" in target.group(1)


def _unique_commands() -> list[tuple[str, str]]:
    """One ``(doc, command)`` per distinct command (the Chinese guide quotes the English one's commands)."""
    first: dict[str, str] = {}
    for doc, cmd in doc_commands():
        first.setdefault(cmd, doc)
    return sorted((doc, cmd) for cmd, doc in first.items())


@pytest.mark.parametrize("doc,cmd", _unique_commands())
def test_quoted_command_runs(doc, cmd, tmp_path, monkeypatch, capsys):
    argv = shlex.split(cmd)
    monkeypatch.chdir(tmp_path)  # relative --out paths in the docs land in tmp_path
    if argv[0] == "make":
        assert argv[1:] == ["figures"], f"{doc}: unexpected make target in {cmd!r}"
        return  # covered by test_makefile_figures_target_runs_the_script
    if argv[0] == "python" and argv[1].startswith("benchmarks/convergence/"):
        module = _load(ROOT / argv[1])
        assert module.main([*argv[2:], "--dry-run", "--out", str(tmp_path / "out.json")]) == 0
        assert (tmp_path / "out.json").is_file()
        return
    if argv[0] == "python" and argv[1] == "scripts/make_figures.py":
        figures = _load(ROOT / argv[1])
        if "--list" in argv:
            assert figures.main(argv[2:]) == 0
            assert set(capsys.readouterr().out.split()) == {f"{n}.png" for n in figures.FIGURES}
        else:  # the quoted flags, then draw one figure from a committed JSON into tmp_path
            assert figures.main([*argv[2:], "--only", "results_adding", "--out", str(tmp_path)]) == 0
            assert (tmp_path / "results_adding.png").is_file()
        return
    if argv[0] == "python" and argv[1] == "scripts/make_samples.py":  # minutes of training: the flags must parse
        _load(ROOT / argv[1]).build_parser().parse_args(argv[2:])
        return
    if argv[0] == "python" and argv[1].startswith("examples/"):
        assert (ROOT / argv[1]).is_file(), f"{doc}: {argv[1]} does not exist"
        return  # the examples have their own tests (tests/test_seed_examples.py)
    if argv[0] == "rnnlab":
        import importlib

        from rnnlab.cli import main

        assert argv[1] in RNNLAB_CHECKS, f"{doc}: add a check for 'rnnlab {argv[1]}' to RNNLAB_CHECKS"
        module, func, validate = RNNLAB_CHECKS[argv[1]]
        seen = []

        def validate_only(cfg, out):
            validate(cfg)
            seen.append(out)
            return Path(out) / "report.html"

        monkeypatch.setattr(importlib.import_module(module), func, validate_only)
        assert main(argv[1:]) == 0
        assert len(seen) == 1
        return
    pytest.fail(f"{doc}: don't know how to check {cmd!r}")
