"""The CLI keeps every run: names that fit with their temporary name, each output on its own,
SIGTERM/SIGHUP like Ctrl-C, --weights written or a reason, plain sentences for odd paths, and the
usual file mode; and its help explains every flag and lists every choice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import models
from demo.engine import data
from demo.engine.config import DEVICES, OPTIMIZERS, REGULARIZERS, TARGETS, RunConfig
from jacobian_penalty import METHODS

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--dataset", "moons", "--arch", "mlp", "--steps", "20", "--quiet", "--no-robustness"]
LONG = ["--dataset", "moons", "--arch", "mlp", "--steps", "100000", "--report-every", "10", "--no-robustness"]


def test_help_explains_every_flag_and_lists_every_choice():
    from demo.cli.main import _parser

    result = subprocess.run([sys.executable, "-m", "demo", "train", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--regularizer" in result.stdout, result.stderr
    train = next(a for a in _parser()._actions if a.dest == "command").choices["train"]
    helps = {action.dest: action.help or "" for action in train._actions}
    expected = {"dataset": data.DATASETS, "arch": models.ARCHITECTURES, "method": METHODS, "target": TARGETS,
                "optimizer": OPTIMIZERS, "device": DEVICES, "regularizer": REGULARIZERS}
    for field in RunConfig.__dataclass_fields__:
        text = helps[field].split("(default:")[0]
        assert len(text.split()) >= 2, f"--{field} has no explanation: {helps[field]!r}"
        assert f"(default: {getattr(RunConfig(), field)})" in helps[field]
        for choice in expected.get(field, ()):
            assert choice in text, (field, choice, text)
        if field in expected:  # the choices also show in the usage line, where argparse puts a metavar
            assert "{" + ",".join(expected[field]) + "}" in " ".join(result.stdout.split()), field


def test_a_long_non_ascii_name_that_fits_is_written(tmp_path):
    from demo.cli.main import main

    name = "€" * 80 + ".json"  # 245 bytes: fits in 255, but a temporary name made of it plus 14 would not
    assert len(name.encode()) == 245
    assert main(["train", *QUICK, "--json", str(tmp_path / name)]) == 0
    assert json.loads((tmp_path / name).read_text())["status"] == "completed"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_a_failed_json_never_costs_the_weights(tmp_path, capsys, monkeypatch):
    from demo.cli import main as cli_main
    from demo.cli import outputs

    real = outputs.write_atomic
    json_path, weights = tmp_path / "run.json", tmp_path / "w.safetensors"

    def too_big(path, data):
        if Path(path).suffix == ".json":
            raise OSError(27, "File too large", str(path))
        real(path, data)

    monkeypatch.setattr(outputs, "write_atomic", too_big)
    status = cli_main.main(["train", *QUICK, "--json", str(json_path), "--weights", str(weights)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"--json {json_path}" in err and "File too large" in err and "Traceback" not in err
    assert weights.stat().st_size > 0 and not json_path.exists()


def run_and_signal(tmp_path: Path, sig: int, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The CLI on a long run, sent `sig` once it reported a few steps; (result, its JSON path)."""
    out = tmp_path / "run.json"
    process = subprocess.Popen([sys.executable, "-m", "demo", "train", *LONG, *extra, "--json", str(out)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while seen.count("step ") < 3 and time.monotonic() < deadline:
        seen += process.stderr.readline()
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, seen + stderr), out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_the_run_and_write_what_was_trained(tmp_path, sig):
    result, out = run_and_signal(tmp_path, sig, "--eval-every", "20")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "stopped" and record["history"], record["status"]


def test_weights_before_the_first_evaluation_get_a_reason_not_silence(tmp_path):
    weights = tmp_path / "w.safetensors"
    result, out = run_and_signal(tmp_path, signal.SIGINT, "--eval-every", "100000", "--weights", str(weights))
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"--weights {weights} was not written" in result.stderr and "evaluation" in result.stderr
    assert json.loads(out.read_text())["status"] == "stopped"  # the other output is written all the same


@pytest.mark.parametrize("kind", ["loop", "nouser"])
def test_odd_paths_get_a_plain_sentence(tmp_path, capsys, kind):
    from demo.cli.main import main

    if kind == "loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        path, words = str(tmp_path / "a" / "run.json"), "loop"
    else:
        path, words = "~nosuchuser-jp/run.json", "no home folder for nosuchuser-jp"
    status = main(["train", *LONG, "--json", path])
    err = capsys.readouterr().err
    assert status == 2 and words in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_outputs_get_the_usual_mode(tmp_path):
    from demo.cli.main import main

    previous = os.umask(0o027)
    try:
        assert main(["train", *QUICK, "--json", str(tmp_path / "r.json"), "--weights", str(tmp_path / "w.st")]) == 0
    finally:
        os.umask(previous)
    for name in ("r.json", "w.st"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, oct((tmp_path / name).stat().st_mode)
