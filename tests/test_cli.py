"""The CLI end to end (contract 2 in shared/design.md), run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from demo.config import RunConfig
from demo.train import build_model

ROOT = Path(__file__).resolve().parents[1]


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
    assert record["config"] == RunConfig(penalty=0.01, steps=60, seed=1, report_every=20).to_dict()
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
    from demo import data

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
    from demo import data
    from jacobian_penalty import METHODS

    for name in [*data.DATASETS, *models.ARCHITECTURES, *METHODS]:
        assert f"  {name} " in result.stdout
