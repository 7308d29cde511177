"""Training: configs, the :class:`Trainer` (truncated BPTT, clipping, non-finite guard), callbacks (gradient
tracking among them: :class:`GradientTracker`), checkpoints.

Build a run from a config with :func:`rnnlab.train.run.setup_run` (model + task + trainer + callbacks) or by
hand::

    cfg = load_config("configs/shakespeare.toml", {"train.max_steps": 100})
    task = build_task(cfg.task, cfg.train.seed)
    model = build_model(cfg.model, task)
    Trainer(model, task, cfg, callbacks=default_callbacks(cfg, "runs/demo")).fit()
"""

from .callbacks import (CheckpointCallback, EarlyStopping, EvalCallback, MetricsLogger, PlotCallback, ProgressBar,
                        TensorBoardLogger, default_callbacks)
from .checkpoint import load_checkpoint, save_checkpoint
from .config import (Config, ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig, config_from_dict,
                     config_to_dict, load_config)
from .guard import clip_gradients
from .schedules import LRSchedule
from .tracking import GradientTracker
from .trainer import Callback, Trainer, build_optimizer

__all__ = ["Config", "ModelConfig", "TaskConfig", "OptimConfig", "TrainConfig", "RunConfig", "load_config",
           "config_from_dict", "config_to_dict", "Trainer", "Callback", "build_optimizer", "LRSchedule",
           "clip_gradients", "save_checkpoint", "load_checkpoint", "EvalCallback", "EarlyStopping", "MetricsLogger",
           "TensorBoardLogger", "ProgressBar", "CheckpointCallback", "PlotCallback", "default_callbacks",
           "GradientTracker"]
