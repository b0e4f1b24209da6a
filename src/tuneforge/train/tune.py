"""`tuneforge tune`: an Optuna search over training hyper-parameters, objective the val loss.

Each trial is a normal `train()` run of the configuration with the sampled values put in (as
``--set`` would), writing its adapter to ``<workspace>/tune/<study>/trial-<n>``. Evaluations during
the run report the val loss to Optuna, and the median pruner may stop a trial that is doing worse
than earlier ones at the same step. The study lives in an SQLite file in the workspace, so running
the same command again continues it, running only the trials still missing.

Raises:
    DataError: no dataset, or one without validation rows (the objective is the val loss).
    ConfigError: a search space that training could not accept (a rank above max_serving_rank).
    TrainError: the preflight failed, or tune.storage cannot be opened.
    TrainInterrupted: Ctrl-C during a trial (recorded as failed; the same command continues).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import TuneforgeConfig
from tuneforge.data import PreparedDataset
from tuneforge.errors import ConfigError, DataError, TrainError, TrainInterrupted
from tuneforge.train import _artifacts as artifacts
from tuneforge.train._progress import ProgressFn, TrainProgress
from tuneforge.train._train import _dataset, train
from tuneforge.workspace import Workspace

log = logging.getLogger("tuneforge.tune")

_LORA_METHODS = ("lora", "dora", "qlora")
EVALS_PER_TRIAL = 4  # without an explicit interval: enough points for the median pruner to compare


@dataclass(frozen=True)
class TrialRow:
    """One trial of the study as stored in Optuna's database."""

    number: int
    state: str  # complete, pruned, fail, running
    value: float | None
    params: dict[str, Any]
    adapter: Path | None
    error: str | None = None
    pruned_at_step: int | None = None


@dataclass(frozen=True)
class TuneResult:
    """The study after this call: its trials (from every run of it) and the best complete one."""

    study: str
    storage: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_adapter: Path | None
    trials: list[TrialRow] = field(default_factory=list)
    ran: int = 0  # trials started by this call


def pruning_callback(trial: Any) -> Any:
    """A transformers TrainerCallback that reports each evaluation's val loss to ``trial`` and stops
    training when Optuna says prune; ``.pruned_at`` is then the step."""
    return _pruning_class()(trial)


@functools.cache
def _pruning_class() -> type:
    from transformers import TrainerCallback  # here, not at import: `import tuneforge.train` stays light

    class PruningCallback(TrainerCallback):
        def __init__(self, trial: Any) -> None:
            self.trial = trial
            self.pruned_at: int | None = None
            self._reported: set[int] = set()

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                        **kwargs: Any) -> Any:
            loss = (metrics or {}).get("eval_loss")
            step = state.global_step
            # train() evaluates again after the last step; a step already reported is not reported twice.
            if loss is None or self.pruned_at is not None or step in self._reported:
                return control
            self._reported.add(step)
            self.trial.report(float(loss), step)
            # At the last step there is nothing left to save by stopping: its loss is the objective.
            if step < state.max_steps and self.trial.should_prune():
                self.pruned_at = step
                control.should_training_stop = True
            return control

    return PruningCallback


def tune(
    cfg: TuneforgeConfig,
    *,
    data: str | Path | PreparedDataset | None = None,
    trials: int | None = None,
    workspace: Workspace | None = None,
    progress: ProgressFn | None = None,
) -> TuneResult:
    """Run (or continue) the study for ``cfg`` until it holds ``trials`` complete or pruned trials."""
    import optuna

    ws = workspace or Workspace.from_env()
    tc = cfg.tune
    target = tc.trials if trials is None else trials
    if target < 1:
        raise ConfigError([f"trials must be >= 1 (got {target})"], source="--trials")
    _check_space(cfg)
    dataset = _dataset(data, cfg.train.data, ws)
    _require_val(dataset)
    # One preflight of the base configuration checks data, model and settings before any trial runs,
    # and gives the step count that sets the evaluation interval.
    dry = train(cfg, data=dataset, workspace=ws, dry_run=True)
    if dry.preflight.rows.get("val", 0) == 0:
        _require_val(dataset, usable=False)
    name = tc.study or f"tune-{dry.name}-{_study_key(cfg, dry.run_key)[:10]}"
    root = ws.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    storage = tc.storage or f"sqlite:///{root / 'optuna.db'}"

    with _quiet_optuna():
        pruner: Any = (optuna.pruners.MedianPruner(n_startup_trials=tc.pruner.n_startup_trials,
                                                   n_warmup_steps=tc.pruner.n_warmup_steps)
                       if tc.pruner.kind == "median" else optuna.pruners.NopPruner())
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                        load_if_exists=True, pruner=pruner)
        except Exception as exc:  # a bad URL, an unreachable database, a study of another direction
            raise TrainError(f"cannot open the Optuna study {name!r}: {exc}", where=f"tune.storage = {storage}",
                             fix="use an sqlite:///PATH or database URL that Optuna can open, or unset "
                             "tune.storage for the workspace's optuna.db") from None
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = sum(t.state in finished for t in study.trials)
        # A fresh seed per call: a resumed study must not replay the first call's samples.
        study.sampler = optuna.samplers.TPESampler(seed=cfg.train.seed + len(study.trials))
        missing = max(0, target - done)
        started = time.monotonic()
        ran = 0
        for i in range(missing):
            if tc.timeout_s is not None and time.monotonic() - started >= tc.timeout_s:
                log.info("tune.timeout_s reached after %d trial(s)", ran)
                break
            ran += 1
            _run_trial(study, cfg, dataset, ws, name, dry.preflight.steps, i, missing, progress)
        return _result(study, name, storage, ran)


def _run_trial(study: Any, cfg: TuneforgeConfig, dataset: PreparedDataset, ws: Workspace, name: str,
               base_steps: int, index: int, missing: int, progress: ProgressFn | None) -> None:
    import optuna

    trial = study.ask()
    out = ws.root.resolve() / "tune" / name / f"trial-{trial.number}"
    trial.set_user_attr("adapter", str(out))
    try:
        trial_cfg = trial_config(cfg, trial, base_steps, f"{name}-trial-{trial.number}")
        if progress:
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
            progress(TrainProgress(f"trial {trial.number}", 0, 0, note=f"trial {trial.number} "
                                   f"({index + 1}/{missing} this run): {shown}"))
        pruning = pruning_callback(trial)
        result = train(trial_cfg, data=dataset, out=out, workspace=ws, progress=progress, callbacks=[pruning])
    except (KeyboardInterrupt, TrainInterrupted):
        trial.set_user_attr("error", "interrupted")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except Exception as exc:  # one trial's failure is recorded and the study goes on
        log.warning("trial %d failed: %s", trial.number, exc)
        trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    if pruning.pruned_at is not None:
        trial.set_user_attr("pruned_at_step", pruning.pruned_at)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    value = result.metrics.get("val_loss")
    if not isinstance(value, float) or not math.isfinite(value):
        trial.set_user_attr("error", f"no finite val loss (got {value!r})")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    study.tell(trial, value)


def trial_config(cfg: TuneforgeConfig, trial: Any, base_steps: int, name: str) -> TuneforgeConfig:
    """``cfg`` with the values ``trial`` samples from tune.space, validated as a --set would be."""
    space, tcfg = cfg.tune.space, cfg.train
    data = cfg.model_dump()
    t = data["train"]
    t["name"] = name
    if space.lr is not None:
        t["lr"] = trial.suggest_float("lr", space.lr.low, space.lr.high, log=True)
    if tcfg.peft in _LORA_METHODS:
        r = trial.suggest_categorical("lora_r", space.lora_r) if space.lora_r else tcfg.lora.r
        t["lora"]["r"] = r
        if space.lora_alpha:
            t["lora"]["alpha"] = trial.suggest_categorical("lora_alpha", space.lora_alpha)
        elif space.alpha_ratio:
            t["lora"]["alpha"] = max(1, round(trial.suggest_categorical("alpha_ratio", space.alpha_ratio) * r))
        if space.dropout is not None:
            t["lora"]["dropout"] = trial.suggest_float("dropout", space.dropout.low, space.dropout.high)
    if space.epochs is not None and tcfg.max_steps is None:  # with max_steps, epochs change nothing
        t["epochs"] = trial.suggest_int("epochs", int(space.epochs.low), int(space.epochs.high))
    if t["eval_every_steps"] is None:
        steps = tcfg.max_steps or max(1, base_steps // tcfg.epochs) * t["epochs"]
        t["eval_every_steps"] = cfg.tune.eval_every_steps or max(1, steps // EVALS_PER_TRIAL)
    return TuneforgeConfig.model_validate(data)


def _check_space(cfg: TuneforgeConfig) -> None:
    space, tcfg = cfg.tune.space, cfg.train
    if tcfg.peft in _LORA_METHODS and space.lora_r and max(space.lora_r) > tcfg.max_serving_rank:
        raise ConfigError([f"tune.space.lora_r includes {max(space.lora_r)}, above train.max_serving_rank="
                           f"{tcfg.max_serving_rank}; such an adapter could not be served"], source="tune.space")


def _require_val(dataset: PreparedDataset, *, usable: bool = True) -> None:
    path = dataset.split_path("val")
    has_rows = path.is_file() and any(line.strip() for line in path.open())
    if has_rows and usable:
        return
    raise DataError(
        "tuning minimises the validation loss, but the dataset has no "
        + ("validation rows" if not has_rows else "validation rows usable by train.method"),
        where=str(path),
        fix="re-run `tuneforge data prepare` with data.split.val > 0 (e.g. --set data.split.val=0.1)",
    )


def _study_key(cfg: TuneforgeConfig, run_key: str) -> str:
    """Same dataset, base, train settings and search space: same study (trial count and timeout aside)."""
    return artifacts.sha256_json({"run": run_key, "space": cfg.tune.space.model_dump(mode="json"),
                                  "eval_every_steps": cfg.tune.eval_every_steps})


def _result(study: Any, name: str, storage: str, ran: int) -> TuneResult:
    import optuna

    rows = [
        TrialRow(
            number=t.number, state=t.state.name.lower(), value=_shown_value(t),
            params=dict(t.params), adapter=Path(t.user_attrs["adapter"]) if "adapter" in t.user_attrs else None,
            error=t.user_attrs.get("error"), pruned_at_step=t.user_attrs.get("pruned_at_step"),
        )
        for t in study.trials
    ]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return TuneResult(name, storage, None, None, {}, None, rows, ran)
    best = min(complete, key=lambda t: t.value)
    adapter = best.user_attrs.get("adapter")
    return TuneResult(name, storage, best.number, best.value, dict(best.params),
                      Path(adapter) if adapter else None, rows, ran)


def _shown_value(t: Any) -> float | None:
    """The objective of a complete trial; for a pruned one, its last reported val loss."""
    if t.value is not None:
        return float(t.value)
    if t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return None


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; the caller reports trials itself. Restored afterwards."""
    import optuna

    was = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(was)
