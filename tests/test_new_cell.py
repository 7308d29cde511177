"""A new cell, as docs/variants.md "Writing a new cell" writes one.

* The page's own cell (the minimal gated unit) is defined through the public API alone (``rnnlab.cellspec.CellSpec``
  and ``rnnlab.Recurrent``, no private name): the code block of the page is run here, so the page cannot drift
  from what works. It trains on the reference loop (the loss goes down), its gradients pass ``gradcheck`` in
  float64, and with the default backend it runs the reference loop (the same numbers) and warns once.
* The page's excerpts of the built-in peephole LSTM are the source as it is (each line is in the named file), and
  "the four files" are all a cell needs: every cell of ``SPECS`` is a choice of the model zoo, configs, bench
  (torch's cells) and diagnostics (torch's layout), by the names the spec gives.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab.cellspec import SPECS, CellSpec

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "variants.md"


def _section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _page_cell() -> CellSpec:
    """The MGU of the page, defined by running the page's (first) code block of "Writing a new cell"."""
    code = _blocks(_section("Writing a new cell"))[0]
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)
    return namespace["MGU"]


def test_the_page_defines_its_cell_with_public_names_only():
    code = _blocks(_section("Writing a new cell"))[0]
    imports = re.findall(r"^(?:import|from) .*$", code, flags=re.M)
    assert imports and all("._" not in line and " _" not in line for line in imports), imports
    assert "rnnlab.Recurrent(" in code and "CellSpec(" in code
    spec = _page_cell()
    assert spec.kernel is None and spec.mode is None and spec.gate_names == ("f", "n")


def _regression_batch(g: torch.Generator, T: int = 6, B: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(T, B, 2)`` and, as the target, the mean of the first feature over time ``(B, 1)``."""
    x = torch.randn(T, B, 2, generator=g)
    return x, x[..., 0].mean(0, keepdim=True).T


def test_the_new_cell_trains_on_the_reference_loop():
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(_page_cell(), 2, 8, backend="reference")
    head = torch.nn.Linear(8, 1)
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=0.03)
    g = torch.Generator().manual_seed(1)
    x_val, y_val = _regression_batch(g, B=256)

    def val_loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(head(layer(x_val)[0][-1]), y_val))

    before = val_loss()
    for _ in range(60):
        x, y = _regression_batch(g)
        loss = torch.nn.functional.mse_loss(head(layer(x)[0][-1]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_loss()
    assert after < 0.5 * before, (before, after)  # predicting 0 costs Var(mean) = 1/6; a learnt mean far less


def test_the_new_cell_gradients_match_finite_differences_float64():
    """Two bidirectional layers with a given initial state, on the reference loop: first and second derivatives of
    the outputs and final states to the input, the initial state and every parameter."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(_page_cell(), 3, 2, num_layers=2, bidirectional=True, backend="reference",
                             dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(x, h0, *ps):
        out, h_n = torch.func.functional_call(layer, dict(zip(names, ps)), (x, h0))
        return out, h_n

    assert torch.autograd.gradcheck(f, (x, h0, *params))
    assert torch.autograd.gradgradcheck(f, (x, h0, *params))


def test_the_new_cell_runs_the_reference_loop_with_the_default_backend_and_warns_once():
    spec = _page_cell()
    torch.manual_seed(0)
    default = rnnlab.Recurrent(spec, 3, 4, num_layers=2)  # backend=None: the process default
    reference = rnnlab.Recurrent(spec, 3, 4, num_layers=2, backend="reference")
    reference.load_state_dict(default.state_dict())
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [default(x)[0] for _ in range(3)]
    want = reference(x)[0]
    for out in got:
        assert torch.equal(out, want)  # the same loop, the same numbers
    said = [str(w.message) for w in caught if "reference loop" in str(w.message)]
    if rnnlab.get_backend() == "reference":  # no faster backend in this process: nothing to warn about
        assert said == []
    else:
        assert len(said) == 1 and "MGU" in said[0], said


# -- the four files: the page's excerpts are the source, and SPECS is the one list ------------------------------

def test_the_page_excerpts_are_the_source_as_it_is():
    excerpts = [b for b in _blocks(_section("Writing a new cell")) if b.startswith("# src/")]
    assert len(excerpts) >= 2
    for block in excerpts:
        path, *lines = block.splitlines()
        source = {line.strip() for line in (ROOT / path[2:]).read_text().splitlines()}
        missing = [line for line in lines if line.strip() not in source and line.strip() != "..."]
        assert not missing, f"{path}: {missing}"


def test_the_page_lists_exactly_the_four_files():
    text = _section("Writing a new cell")
    listed = re.findall(r"^\d\. `([^`]+)`", text, flags=re.M)
    assert listed == ["src/rnnlab/functional.py", "src/rnnlab/cellspec.py", "src/rnnlab/kernels/<cell>.py",
                      "src/rnnlab/kernels/csrc/<cell>.cpp"]


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_every_spec_is_a_choice_everywhere_it_makes_sense(spec):
    from rnnlab.bench import CELLS as BENCH_CELLS
    from rnnlab.diagnostics.tasks import CELLS as DIAGNOSTICS_CELLS
    from rnnlab.diagnostics.tasks import make_layer as diagnostics_layer
    from rnnlab.models import CELLS, make_layer
    from rnnlab.train.config import ModelConfig, load_config, validate_config

    assert spec.config_name in CELLS
    assert make_layer(spec.config_name, 3, 4).spec is spec
    validate_config(load_config(None, {"model.cell": spec.config_name}))
    help_text = ModelConfig.__dataclass_fields__["cell"].metadata["help"]
    assert spec.config_name in help_text
    if spec.mode is not None:  # torch's cells: measured against torch.nn, and the diagnostics read their layout
        assert (spec.mode.split("_")[0], len(spec.gate_names)) in BENCH_CELLS.values()
        assert DIAGNOSTICS_CELLS[spec.config_name] == spec.label
        assert diagnostics_layer(spec.config_name, 3, 4).spec is spec
    exported = getattr(rnnlab, spec.name, None)
    if exported is not None:  # the model zoo builds the public class
        assert type(make_layer(spec.config_name, 3, 4)) is exported
    if spec.gates is not None:  # the gate names are the keys of the gates
        torch.manual_seed(0)
        layer = rnnlab.Recurrent(spec, 3, 4, backend="reference", return_gates=True)
        states = layer(torch.randn(2, 1, 3))[2]
        assert tuple(states.gates) == spec.gate_names
