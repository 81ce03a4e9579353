"""Live forecasting while a run trains (docs/forecast.md).

After each saved checkpoint: incremental per-weight R² (`linearity.stream`), and from
`forecast.start_step` on a RELEX forecast of the run's final step (`extrapolate.relex`),
optionally evaluated (`evaluate.app`), all logged through the tracker and to
`DIR/forecast/forecasts.jsonl`.

- `forecaster.Forecaster`: the object told "step s is saved".
- `hooks`: TRL TrainerCallback (`trl_callbacks`), verl `trainer.checkpoint_callback_class`
  (`VerlForecastCallback`).
- `watch`: `rlvr linearity trajectory.path=DIR watch=true` follows a checkpoint directory.
"""

from .forecaster import Forecaster, ForecastSettings, make_evaluator

__all__ = ["Forecaster", "ForecastSettings", "make_evaluator"]
