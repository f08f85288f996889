"""The reward-hacking monitors of an RL stage at work: probe, log, trip, go back to the last healthy state.

`MonitoredTraining` wraps `models.monitors.RewardHackingMonitor` for a stage's training loop (PPO's own, or a
TRL trainer's callback):

- `before_step` runs the probes when they are due (the reward model and the check on the probe answers, and
  the KL to the reference that the KL budget reads) and keeps a copy of the trainable weights (LoRA adapters, or the
  tiny model: megabytes) as they are before the step;
- `after_step` takes the step's measurements, logs every signal as `monitor/<signal>` and, once the step's
  state is judged healthy, makes that copy the last healthy one;
- on a trip it tags the run (`alignflow.monitor_tripped`, with the reason) and, with `action: stop`,
  `restore_healthy` puts the last healthy weights back before the stage saves its model.

`result_metrics` go into the stage's metrics; `monitor/tripped` is what the gates refuse.
"""

from __future__ import annotations

import logging

import mlflow
import torch
from accelerate.utils import broadcast_object_list

from models.monitors import MonitorThresholds, RewardHackingMonitor, Trip
from tasks.core.tags import MONITOR_TRIPPED_METRIC, MONITOR_TRIPPED_TAG
from tasks.core.training_sections import MonitorSection

log = logging.getLogger(__name__)

def thresholds(section: MonitorSection) -> MonitorThresholds:
    return MonitorThresholds(**{name: getattr(section, name) for name in MonitorThresholds.__dataclass_fields__})


class MonitoredTraining:
    def __init__(self, section: MonitorSection, stage: str, probe=None, *, kl_probe=None, track: bool = True):
        """`probe(step) -> (reward model scores, check verdicts)` of the policy's answers to the probe set and
        `kl_probe(step) -> KL to the reference` (`tasks.training.probes.probe_kl`), each run every
        `section.probe_steps` steps; `track`: this process logs."""
        self.section = section
        self.stage = stage
        self.probe = probe
        self.kl_probe = kl_probe
        self.track = track
        self.monitor = RewardHackingMonitor(thresholds(section))
        self._before: tuple[int, dict[str, torch.Tensor]] | None = None
        self._healthy: tuple[int, dict[str, torch.Tensor]] | None = None
        self._probed: dict[str, float] = {}

    @property
    def trip(self) -> Trip | None:
        return self.monitor.trip

    @property
    def should_stop(self) -> bool:
        return self.trip is not None and self.section.action == "stop"

    def before_step(self, step: int, model) -> None:
        due = step % self.section.probe_steps == 0
        self._probed = self.monitor.probe_signals(*self.probe(step)) if due and self.probe is not None else {}
        if due and self.kl_probe is not None:
            self._probed["kl"] = self.kl_probe(step)
        self._before = (step, _trainable_copy(model))

    def after_step(self, step: int, measured: dict[str, float]) -> Trip | None:
        already = self.trip
        signals, trip = self.monitor.observe(step, {**measured, **self._probed})
        trip = self._main_process_verdict() or trip
        if self.track:
            logged = {f"monitor/{name}": value for name, value in {**signals, **self._probed}.items()}
            mlflow.log_metrics(logged, step=step + 1, synchronous=False)
        if not self.monitor.unhealthy and trip is None and self._before is not None and self._before[0] == step:
            self._healthy = self._before
        if trip is not None and already is None:
            self._report(trip)
        return trip

    def _main_process_verdict(self) -> Trip | None:
        """Under a multi-process launch each process measured its own share of the batch; the main process's
        verdict (its streaks and trip) is everyone's, so all stop, skip a checkpoint or go on together."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        if torch.distributed.get_world_size() == 1:
            return None
        shared = [self.monitor.state_dict()]
        broadcast_object_list(shared, from_process=0)
        self.monitor.load_state_dict(shared[0])
        return self.monitor.trip

    def restore_healthy(self, model) -> int | None:
        """Load the last healthy weights into `model`; returns the step they are from (the state before it), or
        None when this process saw no healthy state (the weights stay as they are)."""
        if self._healthy is None:
            return None
        step, weights = self._healthy
        parameters = dict(model.named_parameters())
        if not weights.keys() <= parameters.keys():
            raise RuntimeError(f"{self.stage}: the healthy weights name parameters the model lacks, for example "
                               f"{sorted(weights.keys() - parameters.keys())[:3]}")
        with torch.no_grad():
            for name, value in weights.items():
                parameters[name].copy_(value)
        return step

    def result_metrics(self, kept_step: int | None = None) -> dict[str, float]:
        if self.trip is None:
            return {MONITOR_TRIPPED_METRIC: 0.0}
        metrics = {MONITOR_TRIPPED_METRIC: 1.0, "monitor/trip_step": float(self.trip.step),
                   "monitor/first_bad_step": float(self.trip.first_bad_step)}
        if kept_step is not None:
            metrics["monitor/kept_step"] = float(kept_step)
        return metrics

    def _report(self, trip: Trip) -> None:
        action = "stopping; keeping the last healthy state" if self.section.action == "stop" else "continuing (warn)"
        log.warning("%s: reward-hacking monitor %s tripped: %s; %s", self.stage, trip.monitor, trip.reason(), action)
        if self.track:
            mlflow.set_tag(MONITOR_TRIPPED_TAG, f"{trip.monitor}: {trip.reason()}")


def _trainable_copy(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()
            if parameter.requires_grad}
