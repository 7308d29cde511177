"""rnnlab.report and `rnnlab gradflow`: the HTML page opens and every image it shows is a real PNG.

The page is checked headless: parse it, and every <img> must reference an existing, non-empty PNG that decodes.
If Debian's chromium is installed, a second test renders the page to a screenshot and checks that every image
loaded (naturalWidth > 0); it skips when chromium is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from rnnlab.cli import main
from rnnlab.diagnostics import analyse
from rnnlab.diagnostics.tasks import LastStepRegressor, adding_batch
from rnnlab.report import Section, plot_profiles, write_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self.tables += tag == "table"


def check_page(page: Path) -> list[str]:
    """Assert every <img> of the page is a decodable, non-empty PNG next to it; return the srcs."""
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.srcs, "the page shows no image"
    for src in parser.srcs:
        png = page.parent / src
        assert png.is_file() and png.stat().st_size > 1000, src
        assert png.read_bytes()[:8] == PNG_MAGIC, src
        img = imread(png)
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img[..., :3].std()) > 0.01, src  # not blank
    return parser.srcs


@pytest.fixture(scope="module")
def gradflow_out(tmp_path_factory) -> Path:
    """One small `rnnlab gradflow` run shared by the tests that read its report."""
    out = tmp_path_factory.mktemp("gradflow") / "gf"
    rc = main(["gradflow", "--cells", "rnn,lstm", "--inits", "orthogonal", "--seq-len", "8", "--hidden-size", "8",
               "--num-layers", "2", "--batch-size", "4", "--rows", "2", "--out", str(out)])
    assert rc == 0
    return out


def test_gradflow_cli_writes_a_complete_report(gradflow_out):
    out = gradflow_out
    srcs = check_page(out / "report.html")
    # every pair has its heatmap, Jacobian, W_hh and gate figures; the LSTM also its c heatmap; plus the overlay
    assert len(srcs) == 2 * 4 + 1 + 1
    assert "lstm-orthogonal_heatmap_c.png" in srcs and "profiles.png" in srcs
    config = json.loads((out / "config.json").read_text())
    assert config["cells"] == ["rnn_tanh", "lstm"] and config["seq_len"] == 8 and config["inits"] == ["orthogonal"]
    diag = json.loads((out / "diagnostics.json").read_text())
    assert set(diag) == {"rnn_tanh-orthogonal", "lstm-orthogonal"}
    # orthogonal W_hh blocks have spectral radius 1 (up to rounding), recorded in the data behind the page
    assert abs(diag["lstm-orthogonal"]["weights"][1]["spectral_radius"]["f"] - 1) < 1e-5
    assert len(diag["lstm-orthogonal"]["profile"]["hidden"][0]) == 8


def test_gradflow_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["gradflow", "--cells", "lstm", "--inits", "irnn", "--seq-len", "5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "rnnlab gradflow: error: apply_init: 'irnn' (Le et al. 2015) is defined for Elman RNNs" in err
    assert main(["gradflow", "--cells", "lstm,tcn", "--out", str(tmp_path)]) == 2
    assert "--cells expects a comma list of ['rnn_tanh', 'rnn_relu', 'lstm', 'gru'], got ['lstm', 'tcn']" in \
        capsys.readouterr().err


def test_write_html_refuses_a_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="write_html: image 'nope.png' not found"):
        write_html(tmp_path / "r.html", "t", [Section("s", images=[("nope.png", "c")])])


def test_profile_plot_and_page_from_the_library(tmp_path):
    model = LastStepRegressor("gru", 2, 6)
    x, y = adding_batch(10, 3)
    diag = analyse(model, lambda: ((model(x) - y) ** 2).mean(), rows=1)
    png = plot_profiles({"gru": diag.profile}, tmp_path / "p.png")
    page = write_html(tmp_path / "r.html", "x <y>", [Section("a & b", text="<script>", images=[(png.name, "cap")],
                                                               table=[["h"], ["1"]])])
    text = page.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text  # escaped
    assert check_page(page) == ["p.png"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(gradflow_out, tmp_path):
    page = gradflow_out / "report.html"
    n_images = len(check_page(page))
    # Count the images the browser actually decoded: a script writes the count into the title, dumped by chromium.
    probe = gradflow_out / "probe.html"
    probe.write_text(page.read_text().replace(
        "</body>", "<script>window.onload=()=>{document.title='loaded:'+[...document.images]"
                   ".filter(i=>i.complete&&i.naturalWidth>0).length}</script></body>"))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
           "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert f"<title>loaded:{n_images}</title>" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2000", page.as_uri()], capture_output=True, timeout=60)
    assert shot.is_file() and float(imread(shot)[..., :3].std()) > 0.01


def test_compare_quick_trains_three_cells_and_writes_the_report(tmp_path):
    import time

    out = tmp_path / "cmp"
    t0 = time.perf_counter()
    assert main(["compare", "--quick", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 180  # the acceptance budget of `rnnlab compare --quick`
    srcs = check_page(out / "report.html")
    assert srcs == ["loss.png", "profiles.png", "grad_norm.png", "rho.png"]
    summary = json.loads((out / "compare.json").read_text())
    assert [r["cell"] for r in summary["runs"]] == ["rnn_tanh", "lstm", "gru"]
    for run in summary["runs"]:
        assert run["steps"] == 40 and run["tracked_steps"] == [0, 20, 40]
        # the reported metric is the trainer's own final evaluation, written in the run folder
        val = [json.loads(line) for line in (out / "runs" / f"{run['cell']}-T20" / "metrics.jsonl").open()
               if '"val"' in line]
        assert abs(val[-1]["val_loss"] - run["val_mse"]) < 1e-9
        assert run["solved"] == (run["val_mse"] <= 0.1 / 6)
        assert (out / "runs" / f"{run['cell']}-T20" / "diagnostics.jsonl").is_file()
    assert json.loads((out / "config.json").read_text())["steps"] == 40


def test_compare_lag_sweep_reports_the_largest_solved_length(tmp_path):
    from rnnlab.report.compare import largest_solved

    assert largest_solved({25: {"lstm": True, "rnn_tanh": True}, 50: {"lstm": True, "rnn_tanh": False},
                           100: {"lstm": False, "rnn_tanh": False}}) == {"lstm": 50, "rnn_tanh": 25}
    assert largest_solved({25: {"gru": False}}) == {"gru": None}
    out = tmp_path / "sweep"
    assert main(["compare", "--quick", "--cells", "gru", "--lags", "6", "--out", str(out)]) == 0
    summary = json.loads((out / "compare.json").read_text())
    mse = summary["lag_sweep"]["val_mse"]["6"]["gru"]
    val = [json.loads(line) for line in (out / "runs" / "gru-T6" / "metrics.jsonl").open() if '"val"' in line]
    assert abs(val[-1]["val_loss"] - mse) < 1e-9
    assert summary["lag_sweep"]["largest_solved"]["gru"] == (6 if mse <= 0.1 / 6 else None)
    assert "largest T solved" in (out / "report.html").read_text()


def test_compare_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert main(["compare", "--init", "xavier", "--out", str(tmp_path)]) == 2
    assert "compare: --init expects one of ['torch', 'orthogonal'" in capsys.readouterr().err
    assert main(["compare", "--task", "copy", "--out", str(tmp_path)]) == 2
    assert "--task supports 'adding'" in capsys.readouterr().err


def test_default_gradflow_report_opens_with_the_forget_gate_contrast(tmp_path):
    """With torch's init and an LSTM, the report also measures the LSTM with forget-gate bias 1 and with chrono init
    and opens with what the half-lives say: at torch's init the gates change little, and both presets lengthen the
    LSTM's memory. The half-lives quoted on the page are the ones in diagnostics.json."""
    from rnnlab.diagnostics import half_life

    out = tmp_path / "gf"
    assert main(["gradflow", "--cells", "rnn,lstm", "--seq-len", "40", "--hidden-size", "16", "--num-layers", "1",
                 "--batch-size", "8", "--rows", "1", "--out", str(out)]) == 0
    diag = json.loads((out / "diagnostics.json").read_text())
    assert set(diag) == {"rnn_tanh-torch", "lstm-torch", "lstm-forget_bias", "lstm-chrono"}
    # by distance from the loss: the states T-1 .. 0, then the initial state (GradientProfile.by_distance)
    hl = {k: half_life([*reversed(d["profile"]["hidden"][0]), d["profile"]["hidden_initial"][0]])
          for k, d in diag.items()}
    assert hl["lstm-torch"] < hl["lstm-forget_bias"] < hl["lstm-chrono"], hl  # each preset opens the cell path
    text = (out / "report.html").read_text()
    assert "What this shows" in text and "sigmoid(0) = 0.5" in text
    assert f"forget-gate bias 1 ({hl['lstm-forget_bias']:.3g} steps)" in text
    # explicit inits other than torch, or --contrast none, measure exactly cells x inits
    assert main(["gradflow", "--cells", "lstm", "--seq-len", "5", "--hidden-size", "4", "--num-layers", "1",
                 "--batch-size", "2", "--rows", "1", "--contrast", "none", "--out", str(tmp_path / "n")]) == 0
    assert set(json.loads((tmp_path / "n" / "diagnostics.json").read_text())) == {"lstm-torch"}
