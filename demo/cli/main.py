"""Command line: `python -m demo train ...`, `python -m demo sweep ...`, `python -m demo list`.

`train` flags are RunConfig's fields (`--batch-size` or `--batch_size`), each explained by the
field's comment in RunConfig and, for a choice, its choices; `--json PATH` writes the run record,
`--weights PATH` the trained weights (safetensors). A progress bar on a terminal, plain lines
otherwise. Bad values get one plain sentence on stderr and exit status 2.

Ctrl-C, SIGTERM and SIGHUP (a `timeout`, `kill`, Slurm's end of a job, a closed ssh session) stop
the run and write what was trained. Each output is written on its own: one that fails is named
in the message and never costs the other. A file that cannot be written says why (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import models
from demo.cli import outputs
from demo.engine import config as config_module
from demo.engine import data, distributed
from demo.engine import sweep as sweeps
from demo.engine.config import REGULARIZERS, ConfigError, RunConfig, label
from demo.engine.record import FAILED, Recorder, to_json
from demo.engine.train import Progress, Robustness, Started, resolve_device, train
from jacobian_penalty import METHODS

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C too: a SIGINT ignored by the parent would be too
def field_help(name: str, default: object, comments: dict[str, str]) -> str:
    """--name's help: the field's comment in RunConfig (or its label), its choices, its default."""
    text = comments.get(name) or label(name)
    options = config_module.choices().get(name)
    if options:
        text += f"; one of: {', '.join(options)}"
    if name == "method":
        text += " (" + "; ".join(f"{n}: {m.estimates}" for n, m in METHODS.items()) + ")"
    if name == "regularizer":
        text = label(name) + ": " + "; ".join(f"{n}: {meaning}" for n, meaning in REGULARIZERS.items())
    return f"{text} (default: {default})".replace("%", "%%")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    comments = config_module.descriptions()
    for f in dataclasses.fields(RunConfig):
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = getattr(defaults, f.name)
        text = field_help(f.name, default, comments)
        if f.type == "bool":
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=text)
        else:
            # Values stay strings here; RunConfig.from_mapping converts and explains bad ones.
            options = config_module.choices().get(f.name)
            metavar = "{" + ",".join(options) + "}" if options else f.type.upper()
            parser.add_argument(*flags, dest=f.name, default=default, metavar=metavar, help=text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("train", help="train with a Jacobian penalty and report")
    _add_config_flags(run)
    run.add_argument("--json", type=Path, help="write the run record (config, history, final, robustness)")
    run.add_argument("--weights", type=Path, help="write the trained weights as safetensors")
    run.add_argument("--quiet", action="store_true", help="print only the final summary")
    sweeping = sub.add_parser("sweep", help="one run per strength (and regulariser); the trade-off table")
    _add_config_flags(sweeping)
    sweeping.add_argument("--penalties", nargs="+", required=True, metavar="STRENGTH",
                          help="the strengths to train with, in this order (lambda, or epsilon for adversarial)")
    sweeping.add_argument("--regularizers", nargs="+", default=None, metavar="NAME",
                          help=f"regularisers to compare, each at every strength ({', '.join(REGULARIZERS)}); "
                               "default: --regularizer")
    sweeping.add_argument("--epsilon", type=float, default=0.1, help="the PGD epsilon of the robust accuracy column")
    sweeping.add_argument("--json", type=Path, required=True, help='write {"runs": [run record, ...]}')
    sweeping.add_argument("--csv", type=Path, help="write the trade-off table as CSV")
    sweeping.add_argument("--quiet", action="store_true", help="print only the table")
    sub.add_parser("list", help="list datasets, architectures and penalty methods")
    return parser


def _list() -> None:
    def table(title, rows):
        print(title)
        for name, text in rows:
            print(f"  {name:<14} {text}")
        print()

    table("Datasets:", data.DATASETS.items())
    table("Architectures:", models.ARCHITECTURES.items())
    table("Penalty methods:", ((n, f"{m.estimates}; cost: {m.cost}") for n, m in METHODS.items()))


class _Reporter:
    """Terminal progress bar (tqdm) or plain lines for logs and pipes."""

    def __init__(self, steps: int, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, unit="step", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if isinstance(event, Started):
            print(f"training {event.config.arch} on {event.dataset['name']} ({event.device}), "
                  f"{event.num_parameters:,} parameters", file=sys.stderr)
        elif isinstance(event, Progress):
            line = (f"ce {event.ce_loss:.4f}  lambda*pen {event.weighted_term:.4f}  "
                    f"acc {event.train_accuracy:.3f}  |J|~{event.jacobian_norm_estimate:.3f}  "
                    f"{event.samples_per_s:,.0f} samples/s")
            if self.bar is not None:
                self.bar.update(event.step - self.bar.n)
                self.bar.set_postfix_str(line, refresh=False)
            else:
                print(f"step {event.step:>6}  {line}", file=sys.stderr)
        elif isinstance(event, Robustness) and self.bar is None:
            print("robustness measured", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    try:
        cfg = RunConfig.from_mapping(values)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    problem = next(filter(None, map(outputs.problem, (args.json, args.weights))), None)
    problem = problem or outputs.clash(args.json, args.weights)
    if problem:  # found before training, so a mistyped path costs no run
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Under torchrun every rank runs this; rank 0 alone prints and writes (demo/engine/distributed.py).
    joined = False
    try:
        joined = distributed.init_from_env(resolve_device(cfg.device))
        return _train_and_write(args, cfg, distributed.is_main())
    except ConfigError as exc:  # e.g. --device cuda on a machine without CUDA
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if joined:
            distributed.shutdown()


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt while the block runs (SIGINT too: a
    process started with SIGINT ignored, as a background job of a script is, keeps it ignored)."""
    previous = {}
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is None:
            continue
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave them be
            previous[number] = signal.signal(number, _interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _train_and_write(args: argparse.Namespace, cfg: RunConfig, main: bool) -> int:
    recorder = Recorder(cfg)
    report = _Reporter(cfg.steps, args.quiet or not main)
    with stop_signals():
        try:
            for event in train(cfg):
                recorder.add(event)
                report(event)
        except (ConfigError, data.DatasetUnavailable) as exc:
            report.close()
            if main:
                print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT if isinstance(exc, ConfigError) else EXIT_RUN_FAILED
        except KeyboardInterrupt as interrupt:
            if main:
                why = f" ({interrupt.args[0]})" if interrupt.args else ""
                print(f"\ninterrupted{why}: writing what was trained so far", file=sys.stderr)
        report.close()
        recorder.stop()  # no-op after Finished; an interrupted run is kept as stopped

        record = recorder.record
        if distributed.is_distributed():
            record["distributed"] = distributed.describe(cfg.batch_size)
        if not main:
            return EXIT_RUN_FAILED if record["status"] in FAILED else 0
        _summary(record)  # first: whatever happens to the files, the run's numbers are on the screen
        written = _write_outputs(args, record, recorder.state_dict)
    if not written:
        return EXIT_RUN_FAILED
    return EXIT_RUN_FAILED if record["status"] in FAILED else 0


def _write_outputs(args: argparse.Namespace, record: dict, state_dict: dict) -> bool:
    """Each requested file, each on its own; False if any could not be written (each said why)."""
    ok = True
    if args.json:
        ok &= _write_one("--json", args.json, lambda: to_json(record, indent=1).encode())
    if args.weights:
        if state_dict:
            from safetensors.torch import save

            def weights() -> bytes:
                tensors = {k: v.contiguous() for k, v in state_dict.items()}
                return save(tensors, metadata={"config": to_json(record["config"])})

            ok &= _write_one("--weights", args.weights, weights)
        else:
            print(f"error: --weights {args.weights} was not written: the run stopped before its first evaluation "
                  f"(step {record['final'].get('steps', 0)}), and weights are taken at evaluations. Train longer, "
                  "or lower --eval-every.", file=sys.stderr)
            ok = False
    return ok


def _write_one(flag: str, path: Path, content, quiet: bool = False) -> bool:
    try:
        outputs.write_atomic(path, content())
    except (OSError, outputs.PathProblem) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"error: the run finished, but writing {flag} {path} failed: {reason}.", file=sys.stderr)
        return False
    if not quiet:
        print(f"wrote {flag} {path}", file=sys.stderr)
    return True


def _summary(record: dict) -> None:
    final = record["final"]
    print(f"status: {record['status']}" + (f" ({record['message']})" if record["message"] else ""))
    print(f"test accuracy {final.get('test_accuracy', float('nan')):.4f}   "
          f"mean ||J||_F {final.get('jacobian_norm', float('nan')):.4f}   "
          f"{final.get('steps', 0)} steps in {final.get('elapsed', 0):.1f} s")
    for attack, key in (("noise", "sigma"), ("fgsm", "epsilon"), ("pgd", "epsilon"), ("square", "epsilon"),
                        ("apgd", "epsilon")):
        rows = record["robustness"].get(attack, [])
        if rows:
            print(f"{attack:>6}: " + "  ".join(f"{key}={r[key]:g}: {r['accuracy']:.3f}" for r in rows))
    for flag in record.get("robustness_checks", []):
        print(f"warning: {flag}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    if args.command == "sweep":
        return _sweep(args)
    return _train(args)


def _sweep(args: argparse.Namespace) -> int:
    """Every config of the sweep trained in turn; the JSON and CSV written atomically at the end,
    and after each run, so an interrupted sweep keeps the runs it finished."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    try:
        # Several regularisers: one baseline (strength 0) and spectral normalisation on once.
        configs = sweeps.configs(RunConfig.from_mapping(values), args.penalties, args.regularizers,
                                 distinct=len(args.regularizers or []) > 1)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    problem = next(filter(None, map(outputs.problem, (args.json, args.csv))), None)
    problem = problem or outputs.clash(args.json, args.csv, names=("--json", "--csv"))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    records: list[dict] = []
    with stop_signals():
        try:
            for index, cfg in enumerate(configs, start=1):
                if not args.quiet:
                    print(f"run {index} of {len(configs)}: {cfg.regularizer} {cfg.penalty:g}", file=sys.stderr,
                          flush=True)
                recorder = Recorder(cfg)
                for event in train(cfg):
                    recorder.add(event)
                records.append(recorder.record)
                if not _write_sweep(args, records):
                    return EXIT_RUN_FAILED
        except KeyboardInterrupt as interrupt:
            why = f" ({interrupt.args[0]})" if interrupt.args else ""
            print(f"\ninterrupted{why}: {len(records)} finished run(s) kept", file=sys.stderr)
        except (ConfigError, data.DatasetUnavailable) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    rows = sweeps.table(records, args.epsilon)
    print(f"{'regularizer':<15}{'strength':>9}{'test acc':>10}{'PGD acc':>9}{'Square':>8}{'||J||_F':>9}"
          f"{'ms/step':>9}  pareto")
    for r in rows:
        print(f"{r['regularizer']:<15}{r['penalty']:>9g}{r['test_accuracy']:>10.3f}{r['robust_accuracy']:>9.3f}"
              f"{r['square_accuracy']:>8.3f}{r['jacobian_norm']:>9.3g}{r['ms_per_step']:>9.2f}  "
              f"{'*' if r['pareto'] else ''}")
    return 0


def _write_sweep(args: argparse.Namespace, records: list[dict]) -> bool:
    """The JSON and the CSV, each on its own; False if either failed (the message names it)."""
    ok = _write_one("--json", args.json, lambda: to_json({"runs": records}, indent=1).encode(), quiet=True)
    if args.csv:
        ok &= _write_one("--csv", args.csv, lambda: sweeps.to_csv(sweeps.table(records, args.epsilon)).encode(),
                         quiet=True)
    return ok
