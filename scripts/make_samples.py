"""Train the main job's model at a reduced budget and record what the guide's section 8 shows: samples at several
training steps and temperatures, and the cell activations of a few units chosen by what they correlate with.

    python scripts/make_samples.py                       # writes docs/data/samples.json (minutes of CPU)
    python scripts/make_samples.py --steps 40 --out /tmp/s.json   # a quick look

The model and data are exactly `rnnlab train`'s defaults (configs/shakespeare.toml: a 1-layer LSTM of 512 units on
Shakespeare, 32 streams x 128 characters, Adam with a cosine schedule) with ``max_steps`` reduced (300 by default,
so the cosine schedule spans 300 steps; the main job runs 800). The result is a small JSON file that
``scripts/make_figures.py`` draws from, so ``make figures`` never retrains.

How units are chosen (after Karpathy, Johnson & Fei-Fei 2015, "Visualizing and understanding recurrent networks"):
run the trained LSTM over held-out text with ``return_all_states=True``, which returns ``c_t`` for every step, and
correlate each unit's ``tanh(c_t)`` with simple features of the text (position in the line, inside a speaker's
name, inside a stage direction). The unit with the largest absolute correlation for a feature is reported with
its correlation; most units correlate with nothing simple.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnlab.models import generate_text
from rnnlab.train.config import load_config
from rnnlab.train.run import setup_run
from rnnlab.train.trainer import Callback, Trainer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "data" / "samples.json"

SAMPLE_STEPS = (25, 100, 300)  # samples at T = 0.8 during training (the last entry is replaced by --steps)
TEMPERATURES = (0.5, 1.0, 1.5)  # samples of the final model
SAMPLE_CHARS = 300
ANALYSIS_CHARS = 20_000  # held-out characters the correlations are measured on
PASSAGE_CHARS = 480  # the passage drawn in the activation figure


class _Sampler(Callback):
    """Generate a sample (same seed every time) at chosen steps, and keep the validation losses."""

    def __init__(self, steps: set[int], vocab: list[str]) -> None:
        self.steps, self.vocab = steps, vocab
        self.samples: list[dict[str, Any]] = []
        self.val: dict[int, float] = {}

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step in self.steps:
            text = generate_text(trainer.model, self.vocab, prime="\n", length=SAMPLE_CHARS, temperature=0.8,
                                 generator=torch.Generator().manual_seed(0))
            self.samples.append({"step": step, "temperature": 0.8, "text": text})

    def on_eval_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.val[step] = round(float(metrics["val_loss"]), 4)


def text_features(text: str) -> dict[str, Tensor]:
    """Per-character features a unit might track: column in the line, inside a speaker's name (a line like
    ``KING HENRY IV:``), inside a stage direction (a line starting ``Enter``/``Exit``/``Exeunt``)."""
    col, speaker, stage = [], [], []
    lines = text.split("\n")
    for line in lines:
        is_speaker = line.endswith(":") and line[:-1].replace(" ", "").replace(".", "").isupper()
        is_stage = line.startswith(("Enter", "Exit", "Exeunt", "Re-enter"))
        for i in range(len(line) + 1):  # + the newline that ends it
            col.append(float(i))
            speaker.append(float(is_speaker))
            stage.append(float(is_stage))
    n = len(text)
    return {"line position": torch.tensor(col[:n]), "speaker name": torch.tensor(speaker[:n]),
            "stage direction": torch.tensor(stage[:n])}


def correlations(acts: Tensor, feature: Tensor) -> Tensor:
    """Pearson correlation of each column of ``acts`` (N, H) with ``feature`` (N,)."""
    a = acts - acts.mean(0)
    f = feature - feature.mean()
    return (a * f[:, None]).sum(0) / (a.norm(dim=0) * f.norm()).clamp_min(1e-12)


@torch.no_grad()
def cell_activations(model: torch.nn.Module, ids: Tensor) -> Tensor:
    """``tanh(c_t)`` of every unit at every character of ``ids`` (T,), via ``return_all_states`` -> (T, H)."""
    layer = model.rnn
    layer.return_all_states = True  # the layer returns AllStates as a third output: h and c of every step
    try:
        emb = model.embed(ids[:, None])  # (T, 1, E)
        _, _, states = layer(emb)
    finally:
        layer.return_all_states = False
    return torch.tanh(states.c[-1, :, 0])  # last layer, batch row 0: (T, H)


def pick_passage(text: str) -> int:
    """Start of the PASSAGE_CHARS-long window, beginning after a blank line, with the most speakers' names (so
    the figure shows several speeches); the first such window on ties."""
    starts = [i + 2 for i in range(len(text) - PASSAGE_CHARS) if text.startswith("\n\n", i)]
    speakers = text_features(text)["speaker name"]
    return max(starts, key=lambda s: int((speakers[s:s + PASSAGE_CHARS].diff() > 0).sum()))


def analyse(model: torch.nn.Module, task: Any, val_text: str, val_ids: Tensor, features: dict[str, Tensor],
            at_init: dict[str, float]) -> tuple[str, list[dict[str, Any]]]:
    """The passage and, per feature, the most correlated unit with its activations over the passage."""
    acts = cell_activations(model, val_ids)  # (N, H)
    start = pick_passage(val_text)
    units = []
    for name, feature in features.items():
        r = correlations(acts, feature)
        best = int(r.abs().argmax())
        units.append({"feature": name, "unit": best, "r": round(float(r[best]), 3),
                      "best_abs_r_at_init": at_init[name],
                      "activation": [round(float(v), 3) for v in acts[start:start + PASSAGE_CHARS, best]]})
    return val_text[start:start + PASSAGE_CHARS], units


def reanalyse(weights: Path, out: Path) -> int:
    """Redo the unit analysis of an existing result file from saved weights (``--save-model``), keeping its
    samples: for a change of features or passage without retraining."""
    result = json.loads(out.read_text(encoding="utf-8"))
    cfg = load_config(ROOT / "configs" / "shakespeare.toml", {"train.max_steps": result["config"]["steps"],
                                                              "run.progress": False})
    trainer = setup_run(cfg, run_dir=None, progress=False)
    task = trainer.task
    val_text = task.char_vocab.decode(task.val_x[:, 0])[:ANALYSIS_CHARS]
    val_ids, features = task.char_vocab.encode(val_text), text_features(val_text)
    init_acts = cell_activations(trainer.model, val_ids)  # the seed's initial weights, as in a full run
    at_init = {name: round(float(correlations(init_acts, f).abs().max()), 3) for name, f in features.items()}
    trainer.model.load_state_dict(torch.load(weights))
    result["passage"], result["units"] = analyse(trainer.model.eval(), task, val_text, val_ids, features, at_init)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{out}: units {[(u['feature'], u['unit'], u['r']) for u in result['units']]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps (the main job runs 800)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=OUT, help="result JSON (default docs/data/samples.json)")
    p.add_argument("--save-model", type=Path, default=None, help="also save the trained weights here (torch.save)")
    p.add_argument("--reanalyse", type=Path, default=None, metavar="WEIGHTS",
                   help="only redo the unit analysis of --out from weights saved by --save-model (no training)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reanalyse:
        return reanalyse(args.reanalyse, args.out)
    cfg = load_config(ROOT / "configs" / "shakespeare.toml",
                      {"train.max_steps": args.steps, "train.threads": args.threads, "run.progress": False})
    steps = {s for s in SAMPLE_STEPS if s < args.steps} | {args.steps}
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = setup_run(cfg, run_dir=None, progress=False)
    sampler = _Sampler(steps, list(trainer.task.vocab))
    trainer.callbacks.append(sampler)
    task = trainer.task
    val_text = task.char_vocab.decode(task.val_x[:, 0])[:ANALYSIS_CHARS]  # stream 0 of the held-out plays
    val_ids, features = task.char_vocab.encode(val_text), text_features(val_text)
    # The control: an untrained LSTM already "correlates" with features that the input alone reveals (a capital
    # letter, a colon), so a unit is interesting only well above what the same search finds at initialisation.
    init_acts = cell_activations(trainer.model, val_ids)
    at_init = {name: round(float(correlations(init_acts, f).abs().max()), 3) for name, f in features.items()}
    trainer.fit()
    model = trainer.model.eval()
    final = [{"step": args.steps, "temperature": t, "text": generate_text(
        model, task.vocab, prime="\n", length=SAMPLE_CHARS, temperature=t, generator=torch.Generator().manual_seed(0))}
        for t in TEMPERATURES]

    passage, units = analyse(model, task, val_text, val_ids, features, at_init)
    result = {
        "what": "rnnlab train's main job (configs/shakespeare.toml) with max_steps reduced; written by "
                "scripts/make_samples.py",
        "config": {"cell": cfg.model.cell, "hidden_size": cfg.model.hidden_size, "steps": args.steps,
                   "batch_size": cfg.task.batch_size, "seq_len": cfg.task.seq_len, "seed": cfg.train.seed},
        "val_loss": {str(k): v for k, v in sorted(sampler.val.items())},
        "samples": sampler.samples + final,
        "analysis_chars": len(val_text),
        "passage": passage,
        "units": units,
        "cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.save_model:  # to re-analyse other units or features without retraining
        torch.save(model.state_dict(), args.save_model)
    print(f"{args.out}: val {result['val_loss']}, units {[(u['feature'], u['unit'], u['r']) for u in units]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
