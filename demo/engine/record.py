"""A run record: the JSON-able summary of a run that the CLI writes and the UI draws.

`Recorder` folds the events of `train()` into the record as they arrive, so a consumer that
stops early (the UI's Stop, a closed generator) still holds everything received so far.

Status: "running" while events arrive; `Recorder.stop()` (a consumer that ends the stream early)
makes it "stopped"; the `Finished` event sets the engine's outcome: "completed", "diverged",
"time_budget" or "out_of_memory". `kept(record)` is a record as it stands if its stream ends now.

Schema (also the CLI's `--json`):
    config, device, status, message, dataset, num_parameters,
    history: [{step, epoch, ce_loss, term, weighted_term, train_accuracy,
               jacobian_norm_estimate, samples_per_s, elapsed}],
    evaluations: [{step, test_accuracy, jacobian_norm (of the logits), elapsed,
                   jacobian_norm_features (only when the penalty targets the features)}],
    final: {steps, test_accuracy, jacobian_norm, train_accuracy, elapsed, samples_per_s},
    robustness: {noise: [{sigma, accuracy}], fgsm: [{epsilon, accuracy}], pgd: [...], square: [...],
                 unbounded: [...], apgd: [...] (thorough only)},
    robustness_checks: [plain sentences: signs of gradient masking; empty when none]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from torch import Tensor

from demo.engine.config import RunConfig
from demo.engine.train import Evaluation, Finished, Progress, Robustness, Started, final_metrics

RUNNING, STOPPED, COMPLETED = "running", "stopped", "completed"
FAILED = ("diverged", "out_of_memory")  # outcomes whose numbers are not a trained model's


def new_record(cfg: RunConfig) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "device": "",
        "status": RUNNING,
        "message": "",
        "dataset": {},
        "num_parameters": 0,
        "history": [],
        "evaluations": [],
        "final": {},
        "robustness": {},
        "robustness_checks": [],
    }


class Recorder:
    """Folds events into `record` (a plain dict) and keeps the latest weights in `state_dict`."""

    def __init__(self, cfg: RunConfig) -> None:
        self.record = new_record(cfg)
        self.state_dict: dict[str, Tensor] = {}

    def add(self, event) -> None:
        record = self.record
        if isinstance(event, Started):
            record["device"] = event.device
            record["dataset"] = event.dataset
            record["num_parameters"] = event.num_parameters
            # RunConfig.num_classes sets the synthetic set's classes only: the record says the
            # run's own (10 for digits), not the setting's default.
            record["config"] = {**record["config"], "num_classes": event.dataset["num_classes"]}
        elif isinstance(event, Progress):
            record["history"].append(asdict(event))
            record["final"] = _partial_final(record)
        elif isinstance(event, Evaluation):
            record["evaluations"].append(_evaluation_record(event))
            self.state_dict = event.state_dict
            record["final"] = _partial_final(record)
        elif isinstance(event, Robustness):
            record["robustness"] = event.results
            record["robustness_checks"] = list(event.checks)
        elif isinstance(event, Finished):
            record["status"] = event.status
            record["message"] = event.message
            # A run cut short by a fault (out of memory) ends with an empty Finished: keep what
            # was received rather than lose it.
            if event.history or not record["history"]:
                record["history"] = list(event.history)
                record["evaluations"] = list(event.evaluations)
            record["final"] = dict(event.final) if event.final else _partial_final(record)
            if event.state_dict:
                self.state_dict = event.state_dict

    def stop(self) -> None:
        """The consumer ended the stream before `Finished`: the run is kept as stopped."""
        self.record = kept(self.record)


def _evaluation_record(event: Evaluation) -> dict[str, float]:
    row = {"step": event.step, "test_accuracy": event.test_accuracy, "jacobian_norm": event.jacobian_norm,
           "elapsed": event.elapsed}
    if event.jacobian_norm_features is not None:
        row["jacobian_norm_features"] = event.jacobian_norm_features
    return row


def with_robustness(record: dict[str, Any], results: dict[str, list], checks: list[str], *,
                    thorough: bool) -> dict[str, Any]:
    """`record` with new robustness results (a later, thorough evaluation): its config says so."""
    config = {**record["config"], "thorough": bool(record["config"].get("thorough")) or thorough}
    return {**record, "config": config, "robustness": results, "robustness_checks": list(checks)}


def kept(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as it stands if its stream ends now: a running run is a stopped one."""
    return {**record, "status": STOPPED} if record["status"] == RUNNING else record


def _partial_final(record: dict[str, Any]) -> dict[str, float]:
    """What a stopped run reports, computed as the engine computes a finished run's."""
    history = record["history"]
    step = history[-1]["step"] if history else 0
    return final_metrics(history, record["evaluations"], step, record["config"]["batch_size"])


def to_json(record: dict[str, Any], **kwargs) -> str:
    """Strict JSON: NaN and infinities (a diverged or unevaluated run) become null."""
    return json.dumps(_finite(record), allow_nan=False, **kwargs)


def finite(value: Any) -> bool:
    """A record's number that can be shown: an int or float that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
