"""The CLI end to end (its flags and JSON schema, as the README states them), run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from demo.engine.config import RunConfig
from demo.engine.train import build_model

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "demo", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_train_writes_the_json_summary_and_weights(tmp_path):
    out, weights = tmp_path / "run.json", tmp_path / "w.safetensors"
    result = cli("train", "--dataset", "digits", "--arch", "mlp", "--penalty", "0.01", "--method", "projection",
                 "--steps", "60", "--seed", "1", "--report-every", "20", "--json", str(out), "--weights", str(weights))
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    # The record's config is the run's, with the classes the dataset has (10 digits), not the
    # synthetic set's setting.
    assert record["config"] == RunConfig(penalty=0.01, steps=60, seed=1, report_every=20, num_classes=10).to_dict()
    assert [h["step"] for h in record["history"]] == [20, 40, 60]
    assert 0 <= record["final"]["test_accuracy"] <= 1 and record["final"]["jacobian_norm"] > 0
    for attack, key in (("noise", "sigma"), ("fgsm", "epsilon"), ("pgd", "epsilon")):
        rows = record["robustness"][attack]
        assert rows and all(set(r) == {key, "accuracy"} for r in rows)
    assert "test accuracy" in result.stdout
    # Plain lines (not a terminal): one per report.
    assert result.stderr.count("step ") >= 3

    # The weights load into the architecture the config names and reproduce the reported accuracy.
    cfg = RunConfig(**record["config"])
    model = build_model(cfg, (1, 8, 8), 10)
    model.load_state_dict(load_file(str(weights)))
    from demo.engine import data

    dataset = data.load("digits", seed=1)
    with torch.no_grad():
        accuracy = (model(dataset.x_test).argmax(1) == dataset.y_test).float().mean().item()
    assert accuracy == pytest.approx(record["final"]["test_accuracy"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--penalty", "nan"], "finite"),
        (["--penalty", "-1"], "at least 0"),
        (["--steps", "many"], "steps must be a number"),
        (["--dataset", "/etc/passwd"], "Unknown dataset"),
        (["--arch", "lenet", "--dataset", "spirals"], "lenet"),
    ],
)
def test_bad_values_get_one_plain_sentence(args, message):
    result = cli("train", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_list_names_everything():
    result = cli("list")
    assert result.returncode == 0
    import models
    from demo.engine import data
    from jacobian_penalty import METHODS

    for name in [*data.DATASETS, *models.ARCHITECTURES, *METHODS]:
        assert f"  {name} " in result.stdout


# --- output files: refused before training, written atomically after ----------------------------


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--json", "/proc/x.json"], "system filesystem"),
        (["--json", "/dev/full"], "system filesystem"),
        (["--weights", "/sys/w.safetensors"], "system filesystem"),
        (["--json", "{tmp}/" + "n" * 300 + ".json"], "bytes long"),
        (["--json", "{tmp}"], "a folder"),
        (["--json", "{tmp}/same", "--weights", "{tmp}/same"], "the same file"),
    ],
    ids=["proc", "dev-full", "sys", "long-name", "folder", "same-file"],
)
def test_output_paths_are_refused_before_any_training(tmp_path, capsys, flags, words):
    from demo.cli.main import main

    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    # 100,000 steps would train for minutes: a refusal must come before the first step.
    status = main(["train", "--dataset", "moons", "--arch", "mlp", "--steps", "100000", *flags])
    err = capsys.readouterr().err
    assert status == 2 and words in err and "Traceback" not in err


def test_a_failed_write_after_the_run_keeps_the_summary_and_exits_1(tmp_path, capsys, monkeypatch):
    from demo.cli import outputs
    from demo.cli.main import main

    target = tmp_path / "run.json"
    target.write_text("previous")

    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_atomic", full_disk)
    status = main(["train", "--dataset", "moons", "--arch", "mlp", "--steps", "20", "--quiet", "--no-robustness",
                   "--json", str(target)])
    captured = capsys.readouterr()
    assert status == 1
    assert "test accuracy" in captured.out  # the summary was printed
    assert "No space left on device" in captured.err and "Traceback" not in captured.err
    assert target.read_text() == "previous"


def test_write_atomic_leaves_the_old_file_or_the_whole_new_one(tmp_path):
    from demo.cli.outputs import write_atomic

    target = tmp_path / "out.json"
    write_atomic(target, b"first")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # fails mid-write
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"


def test_the_weights_carry_their_config_and_the_readme_reloads_them(tmp_path):
    """The README's snippet, run as written on weights the CLI wrote, gives the same predictions."""
    import re

    from demo.cli.main import main

    weights = tmp_path / "w.safetensors"
    assert main(["train", "--dataset", "moons", "--arch", "mlp", "--steps", "30", "--quiet", "--no-robustness",
                 "--weights", str(weights)]) == 0
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "safe_open" in block)
    namespace: dict = {}
    exec(snippet.replace("runs/digits.safetensors", str(weights)), namespace)  # noqa: S102 - our own README
    cfg, model = namespace["cfg"], namespace["model"]
    assert cfg == RunConfig(dataset="moons", arch="mlp", steps=30, robustness=False, num_classes=2)
    reference = build_model(cfg, (2,), 2)
    reference.load_state_dict(load_file(str(weights)))
    x = torch.randn(16, 2)
    assert torch.equal(model(x), reference(x))
