"""Training with a Jacobian penalty, as a generator of events.

    loss = cross_entropy(f(x), y) + lambda * R(x),   R = batch mean of ||J(x_b)||_F^2

`train(cfg)` yields `Started`, then `Progress` every `report_every` steps, `Evaluation` every
`eval_every` steps and at the end, `Robustness` (if asked) and `Finished`. It never prints and
never imports gradio: the CLI, the UI and the tests consume the same stream. Closing the
generator (`gen.close()`, a UI's Stop) ends training at the next event; the consumer keeps
what it has received.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import models
from demo.engine import data as datasets
from demo.engine import distributed, regularizers
from demo.engine.config import ConfigError, RunConfig
from demo.evaluation import attacks, robustness
from jacobian_penalty import (
    ForwardModeUnsafe,
    SampleCouplingError,
    check_samples_independent,
    jacobian_norms,
    jacobian_penalty,
)

__all__ = [
    "ConfigError",
    "RunConfig",
    "Started",
    "Progress",
    "Evaluation",
    "Robustness",
    "Finished",
    "Event",
    "train",
    "resolve_device",
    "build_model",
    "final_metrics",
    "take_step",
    "out_of_memory",
]

EVAL_JACOBIAN_SAMPLES = 256  # fixed test subset for the exact mean ||J||_F (for C <= 10)
ROBUSTNESS_SAMPLES = 500  # test subset for the attacks: PGD costs pgd_steps backward passes
PGD_STEPS = 10
COLLAPSE_MARGIN = 0.02  # test accuracy within this of chance (1/C) is a collapsed model
CHANCE_LOSS_TOLERANCE = 0.02  # a last cross-entropy within 2% of ln C: the model guesses uniformly
INDEPENDENCE_SAMPLES = 8  # the batch on which a run checks once that f keeps samples apart


@dataclass(frozen=True)
class Started:
    config: RunConfig
    device: str
    dataset: dict[str, Any]  # name, kind, input_shape, num_classes, class_names, value_range
    num_parameters: int


@dataclass(frozen=True)
class Progress:
    step: int
    epoch: float
    ce_loss: float  # mean over the steps since the last report
    term: float  # mean regulariser term R (Jacobian penalty: the method's own estimate of ||J||_F^2)
    weighted_term: float  # strength x term: what the regulariser adds to the loss
    train_accuracy: float
    jacobian_norm_estimate: float  # sqrt(term): the Jacobian penalty's estimate of ||J||_F
    samples_per_s: float
    elapsed: float


@dataclass(frozen=True)
class Evaluation:
    step: int
    test_accuracy: float
    jacobian_norm: float  # mean exact ||J(x)||_F of the logits over a fixed test subset
    elapsed: float
    # The same for the features before the head, when that is what the penalty targets: the
    # Jacobian the run actually pulls down. None for a logits run.
    jacobian_norm_features: float | None = None
    # CPU copy of the weights at this step, so a stopped run keeps a model to inspect.
    state_dict: dict[str, Tensor] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class Robustness:
    # noise / fgsm / pgd / square / unbounded (/ apgd) -> [{sigma|epsilon, accuracy}]
    results: dict[str, list[dict[str, float]]]
    checks: tuple[str, ...] = ()  # plain sentences: signs of gradient masking in the results


@dataclass(frozen=True)
class Finished:
    status: str  # "completed", "time_budget", "diverged" or "out_of_memory"
    message: str
    final: dict[str, float]
    history: tuple[dict[str, float], ...]
    evaluations: tuple[dict[str, float], ...]
    state_dict: dict[str, Tensor] = field(repr=False, compare=False, default_factory=dict)


Event = Started | Progress | Evaluation | Robustness | Finished


def resolve_device(name: str) -> torch.device:
    """The one place that picks the run's device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA GPU is available here; use 'auto' or 'cpu'.")
    return torch.device(name)


def build_model(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The run's model, initialised from cfg.seed without touching the caller's RNG; with
    spectral normalisation on every linear and convolutional layer when that is the regulariser."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = models.build(cfg.arch, input_shape, num_classes, **cfg.model_options())
        if cfg.regularizer == "spectral" and cfg.penalty > 0:
            regularizers.spectral_normalise(model)
        return model


StepFn = Callable[..., tuple[Tensor, "Tensor | None", Tensor]]


def train(cfg: RunConfig, *, stop: Callable[[], bool] | None = None, step: StepFn | None = None) -> Iterator[Event]:
    """Train `cfg`, yielding its events (see the module docstring).

    stop: asked at every step and between the pieces of the final evaluation and the attacks; when
        it says yes the run ends at once (no Finished event: the consumer marks what it received
        as stopped). Closing the generator does the same at its next event.
    step: the function that makes one optimisation step, `take_step` by default: the seam through
        which tests count steps or inject a fault (a NaN loss, an allocation failure).
    """
    device = resolve_device(cfg.device)
    data = model = None
    try:
        # Loading the data and building the model allocate too: under a memory ceiling they can
        # be what fails, and that run ends as out_of_memory like one that fails mid-step.
        data = datasets.load(
            cfg.dataset, seed=cfg.seed, device=device, noise=cfg.noise, num_classes=cfg.num_classes
        )
        model = build_model(cfg, data.input_shape, data.num_classes).to(device)
        yield Started(
            config=cfg,
            device=_device_label(device),
            dataset=dataset_info(data),
            num_parameters=sum(p.numel() for p in model.parameters()),
        )
        yield from _run(cfg, model, data, device, stop, step or take_step)
        return
    except robustness.Stopped:
        return
    except (ForwardModeUnsafe, SampleCouplingError) as exc:
        # The library refuses this method on this model (its message says why and what works):
        # a choice of settings, said to the person who made it, not a fault.
        raise ConfigError(str(exc)) from None
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        where = "The GPU" if isinstance(exc, torch.cuda.OutOfMemoryError) else "The machine"
    # Free what this run held so the next run starts clean, then say what to change. Outside the
    # except block: there the traceback still holds _run's frame (model, optimizer, activations),
    # so empty_cache could hand nothing back. The consumer keeps the progress it already received.
    data = model = None
    gc.collect()
    torch.cuda.empty_cache()
    yield Finished(
            status="out_of_memory",
            message=f"{where} ran out of memory. Try a smaller batch size, fewer projections, "
            "or the 'projection' method instead of 'exact'.",
            final={},
            history=(),
            evaluations=(),
        )


def out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: CUDA's, or the CPU's as torch words it (a RuntimeError), or a
    thread whose stack no longer fits under the server's address-space ceiling."""
    text = str(exc)
    return (isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "can't allocate memory" in text
            or "not enough memory" in text or "out of memory" in text or "can't start new thread" in text
            or "std::bad_alloc" in text)  # C++'s failed allocation (torch's own ops, e.g. while loading data)


def dataset_info(data: datasets.Dataset) -> dict[str, Any]:
    return {
        "name": data.name,
        "kind": data.kind,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "value_range": None if data.value_range is None else list(data.value_range),
        "train_size": int(data.x_train.shape[0]),
        "test_size": int(data.x_test.shape[0]),
    }


@dataclass
class _Window:
    """The steps since the last report: sums kept on the device (a host sync only at report time)."""

    device: torch.device
    sums: Tensor = None  # (ce sum, term sum, correct count)
    samples: int = 0
    since: float = 0.0  # perf_counter at the window's start

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums, self.samples, self.since = torch.zeros(3, device=self.device), 0, time.perf_counter()

    def add(self, ce: Tensor, term: Tensor | None, correct: Tensor, samples: int) -> None:
        self.sums += torch.stack([ce.detach(), torch.zeros_like(ce) if term is None else term.detach(), correct])
        self.samples += samples


@dataclass
class _Progress:
    """What a run has so far: its reports, its kept evaluations and the weights of the last good one."""

    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    last_good_state: dict[str, Tensor] = field(default_factory=dict)

    def last_reported_step(self) -> int:
        return self.history[-1]["step"] if self.history else 0


def _run(cfg: RunConfig, model: nn.Module, data: datasets.Dataset, device: torch.device,
         stop: Callable[[], bool] | None, take: StepFn) -> Iterator[Event]:
    penalised = model if cfg.target == "logits" else model.features
    # Once per run, by behaviour: a per-sample penalty needs outputs that keep samples apart.
    model.train()
    check_samples_independent(penalised, data.x_train[:INDEPENDENCE_SAMPLES])
    # Under torchrun (see demo/engine/distributed.py): the step's forward goes through DDP, every
    # rank draws the same global batch of batch_size x world and trains on its shard, with its own
    # probes; rank 0 alone evaluates the unwrapped model. One process: net is penalised, world 1.
    net = distributed.wrap(model, cfg.target)
    world = distributed.world_size()
    optimizer = _optimizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = _batches(data.x_train.shape[0], cfg.batch_size * world, cfg.seed, device)
    # Probes get their own generator: the same seed gives the same run on the CPU.
    probes = torch.Generator(device=device).manual_seed(cfg.seed + 1 + distributed.rank())

    so_far, window = _Progress(), _Window(device)
    start = time.perf_counter()
    status, message, step = "completed", "", 0
    for step in range(1, cfg.steps + 1):
        # forward, backward, update
        idx, epoch = next(batches)
        x, y = data.x_train[distributed.shard(idx)], data.y_train[distributed.shard(idx)]
        model.train()
        ce, term, correct = take(cfg, model, net, optimizer, params, x, y, probes)

        # termination conditions known before the report: Stop, the time budget
        if stop is not None and stop():
            return
        out_of_time = cfg.time_budget > 0 and distributed.any_rank(time.perf_counter() - start >= cfg.time_budget,
                                                                    device)

        # report window
        reporting = step % cfg.report_every == 0 or step == cfg.steps or out_of_time
        steps_in_window = step - so_far.last_reported_step()
        term, jacobian_estimate = _report_terms(cfg, penalised, x, probes, term, reporting, steps_in_window)
        window.add(ce, term, correct, x.shape[0])
        if reporting:
            record = _report(cfg, window, step, epoch, steps_in_window, jacobian_estimate, start)
            if not (math.isfinite(record["ce_loss"]) and math.isfinite(record["term"])):
                # A loss that is no longer finite: the run keeps its last good numbers.
                status = "diverged"
                message = _divergence_message(cfg, step, record["ce_loss"], record["term"], so_far.history)
                break
            so_far.history.append(record)
            yield Progress(**record)
            window.reset()

        # evaluation gate: on schedule, on the main rank, not at the last step (finish evaluates)
        if step % cfg.eval_every == 0 and step != cfg.steps and not out_of_time and distributed.is_main():
            evaluation = _evaluate(model, data, step, time.perf_counter() - start, cfg.target)
            # This step's update can break the weights although its loss, computed before the
            # update, was finite: such an evaluation is not kept, and the next report stops the run.
            if _finite(evaluation):
                so_far.last_good_state = evaluation.state_dict
                so_far.evaluations.append(_eval_record(evaluation))
                yield evaluation
        if out_of_time:
            status = "time_budget"
            message = f"Stopped at step {step} of {cfg.steps}: the time budget of {cfg.time_budget:g} s was reached."
            break

    yield from _finish(cfg, model, data, so_far, status, message, step, world, start, stop)


def _report_terms(cfg, penalised, x, probes, term, reporting: bool, steps_in_window: int):
    """(term to accumulate, separate ||J||^2 estimate or None) for this step.

    lambda = 0 trains without the penalty: its estimate is measured on the report step's batch and
    counted as if every step of the window had it, so the window's mean holds. Another regulariser's
    own term is its term; ||J|| is then estimated on report steps only.
    """
    if term is None and reporting and cfg.regularizer == "jacobian":
        term = _report_estimate(cfg, penalised, x, probes) * steps_in_window
    jacobian_estimate = (_report_estimate(cfg, penalised, x, probes)
                         if reporting and cfg.regularizer != "jacobian" else None)
    return term, jacobian_estimate


def _report(cfg, window: _Window, step: int, epoch: float, steps_in_window: int, jacobian_estimate,
            start: float) -> dict[str, float]:
    """The window's report as a history record (its losses may be NaN or inf: the caller checks)."""
    window.sums, window.samples = distributed.reduce_report(window.sums, window.samples)
    ce_mean, term_mean, correct_sum = (
        window.sums / torch.tensor([steps_in_window, steps_in_window, 1.0], device=window.device)).tolist()
    now = time.perf_counter()
    estimate = term_mean if jacobian_estimate is None else float(jacobian_estimate)
    return {
        "step": step,
        "epoch": epoch,
        "ce_loss": ce_mean,
        "term": term_mean,
        "weighted_term": cfg.penalty * term_mean,
        "train_accuracy": correct_sum / window.samples,
        "jacobian_norm_estimate": math.sqrt(max(estimate, 0.0)) if math.isfinite(estimate) else math.nan,
        "samples_per_s": window.samples / max(now - window.since, 1e-9),
        "elapsed": now - start,
    }


def _finish(cfg, model, data, so_far: _Progress, status: str, message: str, step: int, world: int, start: float,
            stop) -> Iterator[Event]:
    """The last events: a diverged run keeps its last good numbers; ranks > 0 leave evaluation and
    robustness to rank 0; the main rank evaluates, measures robustness if asked, and finishes."""
    if status == "diverged":
        final = final_metrics(so_far.history, so_far.evaluations, so_far.last_reported_step(),
                              cfg.batch_size * world)
        yield Finished(status, message, final, tuple(so_far.history), tuple(so_far.evaluations),
                       so_far.last_good_state)
        return
    if not distributed.is_main():
        # Ranks > 0 hold the same weights as rank 0 and leave evaluation and robustness to it.
        final = final_metrics(so_far.history, [], step, cfg.batch_size * world)
        yield Finished(status, message, final, tuple(so_far.history), (), {})
        return
    evaluation = _evaluate(model, data, step, time.perf_counter() - start, cfg.target)
    so_far.evaluations.append(_eval_record(evaluation))
    yield evaluation
    if cfg.robustness:
        yield robustness_report(model, data, cfg.seed, cfg.thorough, should_stop=stop)
    final = final_metrics(so_far.history, so_far.evaluations, step, cfg.batch_size * world)
    message = message or collapse_message(cfg, final["test_accuracy"], data.num_classes, so_far.history)
    yield Finished(status, message, final, tuple(so_far.history), tuple(so_far.evaluations), evaluation.state_dict)


def collapse_message(cfg: RunConfig, test_accuracy: float, num_classes: int,
                     history: list[dict[str, float]] | tuple = ()) -> str:
    """What to say when a run that finished predicts no better than chance, or "" when it learned.

    A model pushed flat by a huge penalty (or thrown about by a huge learning rate) ends "completed"
    with accuracy near 1/C and ‖J‖ near 0: numbers that look like success unless someone says so.
    Two signs, either enough: test accuracy within COLLAPSE_MARGIN of chance, or a cross-entropy
    still at ln C (the loss of a uniform guess) at the last report.
    """
    chance = 1.0 / num_classes
    near_chance = math.isfinite(test_accuracy) and test_accuracy <= chance + COLLAPSE_MARGIN
    last_ce = history[-1]["ce_loss"] if history else math.nan
    uniform_ce = math.log(num_classes)
    flat_loss = math.isfinite(last_ce) and abs(last_ce - uniform_ce) <= CHANCE_LOSS_TOLERANCE * uniform_ce
    if not (near_chance or flat_loss):
        return ""
    causes = []
    if cfg.penalty >= 1.0:
        causes.append(f"the strength {cfg.penalty:g} is very large: try 0.01 to 0.1")
    if cfg.lr >= 0.1:
        causes.append(f"the learning rate {cfg.lr:g} is very large: try 0.001")
    advice = "; ".join(causes) if causes else "lower the strength or the learning rate, or train longer"
    sign = (f"test accuracy {test_accuracy:.3f} with {num_classes} classes (chance is {chance:.3f})" if near_chance
            else f"its cross-entropy stayed at {last_ce:.2f}, the ln {num_classes} = {uniform_ce:.2f} of a uniform "
                 f"guess (test accuracy {test_accuracy:.3f})")
    return f"The model collapsed to chance: {sign}, so its small ‖J‖ means nothing; {advice}."


def take_step(cfg, model, penalised, optimizer, params, x, y, probes) -> tuple[Tensor, Tensor | None, Tensor]:
    """One optimisation step; returns (cross-entropy, the regulariser's term R (for the Jacobian
    penalty the method's estimate of ||J||_F^2) or None if lambda = 0, correct count) as tensors."""
    if cfg.regularizer != "jacobian":
        return regularizers.step(cfg, model, penalised, optimizer, params, x, y, probes)
    if cfg.penalty > 0:
        out, term = jacobian_penalty(
            penalised, x, method=cfg.method, num_projections=cfg.num_projections, generator=probes
        )
    else:
        out, term = penalised(x), None  # a plain step: no penalty, no extra backward
    logits = out if cfg.target == "logits" else model.head(out)
    ce = F.cross_entropy(logits, y)
    loss = ce if term is None else ce + cfg.penalty * term
    optimizer.zero_grad(set_to_none=True)
    # Only the parameters' gradients: a bare backward() would also compute d loss / d x for the
    # penalty's private copy of x, which nobody reads (lenet's step: 3.1x -> 2.5x a plain step).
    loss.backward(inputs=params)
    optimizer.step()
    correct = (logits.detach().argmax(dim=1) == y).sum().to(logits.dtype)
    return ce, term, correct


def _report_estimate(cfg, penalised, x, probes) -> Tensor:
    """lambda = 0 trains without the penalty; its estimate is still shown, measured on the
    report step's batch only (no graph), so a plain run pays for it once per report."""
    _, estimate = jacobian_penalty(
        penalised, x, method=cfg.method, num_projections=cfg.num_projections, create_graph=False, generator=probes
    )
    return estimate


def _optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def _batches(n: int, batch_size: int, seed: int, device: torch.device) -> Iterator[tuple[Tensor, float]]:
    """Endless shuffled mini-batch indices (dropping each epoch's ragged tail) with the epoch."""
    gen = torch.Generator(device=device).manual_seed(seed)
    size = min(batch_size, n)
    seen = 0
    while True:
        order = torch.randperm(n, generator=gen, device=device)
        for start in range(0, n - size + 1, size):
            seen += size
            yield order[start : start + size], seen / n


def jacobian_subset_size(num_classes: int) -> int:
    """Test points for the exact ||J||: fewer as C grows, so evaluation stays about as cheap."""
    return max(32, min(EVAL_JACOBIAN_SAMPLES, EVAL_JACOBIAN_SAMPLES * 10 // num_classes))


def mean_jacobian_norm(model: nn.Module, x: Tensor) -> float:
    # The library picks the direction (columns for 2-D points) and a memory-bounded row count.
    chunks = [jacobian_norms(model, x[i : i + 128]) for i in range(0, len(x), 128)]
    norms = torch.cat(chunks)
    return norms.mean().item()


def _evaluate(model: nn.Module, data: datasets.Dataset, step: int, elapsed: float, target: str = "logits"
              ) -> Evaluation:
    was_training = model.training
    model.eval()
    subset = data.x_test[: jacobian_subset_size(data.num_classes)]
    evaluation = Evaluation(
        step=step,
        test_accuracy=robustness.accuracy(model, data.x_test, data.y_test),
        jacobian_norm=mean_jacobian_norm(model, subset),
        elapsed=elapsed,
        jacobian_norm_features=mean_jacobian_norm(model.features, subset) if target == "features" else None,
        state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
    )
    model.train(was_training)
    return evaluation


def _finite(evaluation: Evaluation) -> bool:
    features = evaluation.jacobian_norm_features
    return math.isfinite(evaluation.jacobian_norm) and (features is None or math.isfinite(features)) and all(
        bool(torch.isfinite(v).all()) for v in evaluation.state_dict.values() if v.is_floating_point()
    )


def _eval_record(evaluation: Evaluation) -> dict[str, float]:
    record = asdict(evaluation)
    record.pop("state_dict")
    if record["jacobian_norm_features"] is None:  # a logits run has one Jacobian to report
        del record["jacobian_norm_features"]
    return record


def robustness_report(model: nn.Module, data: datasets.Dataset, seed: int, thorough_evaluation: bool, *,
                      should_stop: Callable[[], bool] | None = None) -> Robustness:
    """Noise, FGSM and PGD; the gradient-free Square attack, PGD at an epsilon that reaches any input
    (and APGD when thorough); and the signs of gradient masking those results show. `should_stop`
    is asked between attack levels (robustness.Stopped is raised when it says yes)."""
    sigmas, epsilons = robustness.default_grid(data.kind)
    x, y = data.x_test[:ROBUSTNESS_SAMPLES], data.y_test[:ROBUSTNESS_SAMPLES]
    results = robustness.evaluate(
        model, x, y, value_range=data.value_range, sigmas=sigmas, epsilons=epsilons, pgd_steps=PGD_STEPS, seed=seed,
        should_stop=should_stop,
    )
    results.update(attacks.evaluate(model, x, y, value_range=data.value_range, epsilons=epsilons, kind=data.kind,
                                    seed=seed, thorough=thorough_evaluation, pgd_steps=PGD_STEPS,
                                    should_stop=should_stop))
    flags = attacks.masking_flags(results, kind=data.kind, num_classes=data.num_classes)
    return Robustness(results, tuple(flags))


def final_metrics(history: list[dict], evaluations: list[dict], step: int, batch_size: int) -> dict[str, float]:
    """A run's final numbers: the latest progress report and the latest evaluation."""
    last_eval = evaluations[-1] if evaluations else {}
    last = history[-1] if history else {}
    elapsed = last.get("elapsed", 0.0)
    return {
        "steps": step,
        "test_accuracy": last_eval.get("test_accuracy", float("nan")),
        "jacobian_norm": last_eval.get("jacobian_norm", float("nan")),
        "train_accuracy": last.get("train_accuracy", float("nan")),
        "elapsed": elapsed,
        "samples_per_s": step * batch_size / elapsed if elapsed > 0 else 0.0,
    }


def _divergence_message(cfg: RunConfig, step: int, ce: float, term: float, history: list[dict]) -> str:
    what = "the cross-entropy" if not math.isfinite(ce) else "the Jacobian penalty"
    kept = f"step {history[-1]['step']}" if history else "no step (it diverged before the first report)"
    return (
        f"Training diverged: {what} became {ce if what == 'the cross-entropy' else term} by step {step}. "
        f"The penalty weight ({cfg.penalty:g}) or the learning rate ({cfg.lr:g}) is probably too large. "
        f"The metrics shown are the last good ones, from {kept}."
    )


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'' if threads == 1 else 's'})"
