"""RunConfig: the single source of a training run's parameters.

The UI builds it from component values, the CLI from flags named after its fields, tests
construct it directly. It validates itself on construction and says in plain words what is wrong.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import models
from demo.engine import data
from jacobian_penalty import METHODS

TARGETS = ("logits", "features")
# What `penalty` (the strength) means for each regulariser, in the words the app and CLI use.
REGULARIZERS = MappingProxyType({
    "jacobian": "penalty λ on ‖J(x)‖²_F, the squared Frobenius norm of the input-output Jacobian",
    "input_gradient": "penalty λ on ‖∇ₓ loss‖², double backpropagation (Drucker & LeCun 1992)",
    "adversarial": "training ε: train on PGD examples within this L∞ radius (Madry et al. 2018); 0: clean data",
    "spectral": "on when > 0: every layer's weight divided by its largest singular value (spectral normalisation)",
    "weight_decay": "penalty λ on ‖θ‖², the squared norm of the weights",
})
MAX_ADVERSARIAL_EPSILON = 1.0  # input units: images span [0, 1]
OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")

# Hard bounds: beyond them a run is a mistake or a denial of service, not an experiment.
# A public Space narrows them further through environment variables (demo.app.limits).
MAX_STEPS = 100_000
MAX_BATCH = 4096
MAX_PROJECTIONS = 64
MAX_PENALTY = 1e6
MAX_LR = 10.0
MAX_SEED = 2**31 - 1
MAX_WIDTH = 4096
MAX_DEPTH = 16
MAX_CLASSES = 2000
MAX_NOISE = 2.0


class ConfigError(ValueError):
    """A run's parameters are wrong; the message is meant for the person who chose them."""


# Each field as people see it in the app and the CLI's help: messages name fields this way.
LABELS = MappingProxyType({
    "penalty": "penalty λ", "num_projections": "projections per step", "batch_size": "batch size",
    "lr": "learning rate", "time_budget": "time budget (s)", "report_every": "steps between reports",
    "eval_every": "steps between evaluations", "num_classes": "number of classes", "width": "MLP width",
    "depth": "MLP depth",
})


def label(name: str) -> str:
    return LABELS.get(name, name)


def shown(value: Any) -> str:
    """A value as a message may quote it: short, whatever was sent."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run. Defaults: a ~2 s CPU run on embedded digits."""

    dataset: str = "digits"  # the data set to train on (python -m demo list describes each)
    arch: str = "mlp"  # the architecture (python -m demo list describes each)
    # The regulariser's strength: λ for jacobian, input_gradient and weight_decay; the training ε for
    # adversarial; on when > 0 for spectral (REGULARIZERS).
    penalty: float = 0.01
    method: str = "projection"  # the estimator of ||J||_F^2 for the Jacobian penalty
    num_projections: int = 1  # random probes per sample and step (projection, jvp and fd)
    target: str = "logits"  # penalise d logits / dx, or d features / dx (penultimate layer)
    steps: int = 1500  # training steps
    batch_size: int = 64  # samples per training step
    optimizer: str = "adam"  # the optimizer
    lr: float = 1e-3  # the learning rate
    seed: int = 0  # seeds the initialisation, the batches, the probes and the generated data sets
    device: str = "auto"  # "auto" takes CUDA when present
    time_budget: float = 0.0  # seconds of training; 0 means no limit
    report_every: int = 25  # steps between progress events (each costs one host sync)
    eval_every: int = 250  # steps between evaluations on the test set
    noise: float = 0.1  # noise level of the 2-D point sets
    num_classes: int = 100  # classes of the synthetic many-class set
    width: int = 256  # mlp hidden width
    depth: int = 2  # mlp hidden layers
    robustness: bool = True  # measure accuracy under noise, FGSM, PGD and Square at the end
    regularizer: str = "jacobian"  # what the strength `penalty` sets (REGULARIZERS says how)
    thorough: bool = False  # robustness: also APGD, and Square with more queries on more points (slower)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(" ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from loosely typed values (UI components, JSON): whole floats become ints,
        strings are stripped; unknown keys and unconvertible values are reported in plain words."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"Unknown setting(s): {', '.join(map(str, unknown))}.")
        return cls(**{name: _coerce(name, known[name].type, v) for name, v in values.items()})

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def evaluations(self) -> int:
        """Evaluations a full run makes: every eval_every steps, and one at the end (train's gate)."""
        return (self.steps - 1) // self.eval_every + 1

    def model_options(self) -> dict[str, int]:
        """The architecture's own settings for models.build: the MLP's width and depth."""
        return {"width": self.width, "depth": self.depth} if self.arch == "mlp" else {}


def _coerce(name: str, type_name: str, value: Any) -> Any:
    if value is None:
        return value  # an emptied field: validation says so in words
    if isinstance(value, str):
        value = value.strip()
    try:
        if type_name == "int" and not isinstance(value, bool):
            number = float(value)
            if number.is_integer():
                return int(number)
            return value  # left for validation to explain
        if type_name == "float" and not isinstance(value, bool):
            return float(value)
        if type_name == "bool" and isinstance(value, str):
            if value.lower() in ("true", "1", "yes", "on"):
                return True
            if value.lower() in ("false", "0", "no", "off"):
                return False
    except (TypeError, ValueError):
        raise ConfigError(f"{label(name)} must be a number, got {shown(value)}.") from None
    except OverflowError:  # an integer like 10**400: float() cannot hold it
        raise ConfigError(f"{label(name)} is far too large ({len(str(value))} digits).") from None
    return value


def _choice(name: str, value: Any, choices) -> str | None:
    if isinstance(value, str) and value in choices:
        return None
    if value is None:
        return f"Choose a {name}: one of {', '.join(choices)}."
    what = repr(value) if isinstance(value, str) and len(value) <= 40 else f"(a {type(value).__name__})"
    return f"Unknown {name} {what}; choose one of: {', '.join(choices)}."


def _integer(name: str, value: Any, low: int, high: int) -> str | None:
    if value is None:  # an emptied field in the app
        return f"{name.capitalize()} is empty: type a whole number from {low} to {high}."
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be a whole number, got {shown(value)}."
    if not low <= value <= high:
        return f"{name} must be between {low} and {high}, got {shown(value)}."
    return None


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> str | None:
    if value is None:  # an emptied field in the app
        low_text = f"greater than {low:g}" if low_open else f"from {low:g}"
        return f"{name.capitalize()} is empty: type a number {low_text} to {high:g}."
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {shown(value)}."
    if isinstance(value, int) and abs(value) > 1e300:
        return f"{name} is far too large ({len(str(value))} digits)."
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value}."
    if value < low or (low_open and value == low) or value > high:
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        return f"{name} must be {bound} and at most {high:g}, got {value:g}."
    return None


def choices() -> dict[str, tuple[str, ...]]:
    """The values each enumerated field takes: what RunConfig checks and the CLI lists."""
    return {"dataset": tuple(data.DATASETS), "arch": tuple(models.ARCHITECTURES), "method": tuple(METHODS),
            "target": TARGETS, "optimizer": OPTIMIZERS, "device": DEVICES, "regularizer": tuple(REGULARIZERS)}


def descriptions() -> dict[str, str]:
    """What each field means, by name: its comment in RunConfig's source (the comment at the end of
    its line, or the comment lines right above it), so the CLI's help cannot drift from it."""
    lines = inspect.getsource(RunConfig).splitlines()
    tree = ast.parse(textwrap.dedent("\n".join(lines)))
    found = {}
    for node in tree.body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        line = lines[node.end_lineno - 1]
        if "#" in line:
            found[node.target.id] = line.split("#", 1)[1].strip()
            continue
        above = []
        for previous in reversed(lines[: node.lineno - 1]):
            if not previous.strip().startswith("#"):
                break
            above.insert(0, previous.strip().lstrip("#").strip())
        if above:
            found[node.target.id] = " ".join(above)
    return found


def _problems(cfg: RunConfig) -> list[str]:
    options = choices()
    checks = [
        *(_choice("architecture" if name == "arch" else name, getattr(cfg, name), values)
          for name, values in options.items()),
        _number("penalty λ (lambda)", cfg.penalty, 0.0, MAX_PENALTY),
        _integer("projections per step (num_projections)", cfg.num_projections, 1, MAX_PROJECTIONS),
        _integer("steps", cfg.steps, 1, MAX_STEPS),
        _integer("batch size", cfg.batch_size, 1, MAX_BATCH),
        _number("learning rate", cfg.lr, 0.0, MAX_LR, low_open=True),
        _integer("seed", cfg.seed, 0, MAX_SEED),
        _number("time budget (s)", cfg.time_budget, 0.0, 7 * 24 * 3600.0),
        _integer("steps between reports", cfg.report_every, 1, MAX_STEPS),
        _integer("steps between evaluations", cfg.eval_every, 1, MAX_STEPS),
        _number("noise", cfg.noise, 0.0, MAX_NOISE),
        _integer("number of classes", cfg.num_classes, 2, MAX_CLASSES),
        _integer("MLP width", cfg.width, 1, MAX_WIDTH),
        _integer("MLP depth", cfg.depth, 1, MAX_DEPTH),
        None if isinstance(cfg.robustness, bool) else f"robustness must be true or false, got {shown(cfg.robustness)}.",
        None if isinstance(cfg.thorough, bool) else f"thorough must be true or false, got {shown(cfg.thorough)}.",
    ]
    problems = [p for p in checks if p]
    if not problems and cfg.regularizer != "jacobian" and cfg.target != "logits":
        problems.append(f"The target (logits or features) applies to the Jacobian penalty only; the "
                        f"{cfg.regularizer} regulariser works on the loss of the logits: keep target 'logits'.")
    if not problems and cfg.regularizer == "adversarial" and cfg.penalty > MAX_ADVERSARIAL_EPSILON:
        problems.append(f"The training ε of adversarial training must be at most {MAX_ADVERSARIAL_EPSILON:g} "
                        f"(inputs span [0, 1]), got {cfg.penalty:g}.")
    if not problems:
        shape = data.input_shape(cfg.dataset)
        reason = models.incompatibility(cfg.arch, shape, dataset=cfg.dataset)
        if reason:
            problems.append(reason)
    return problems
