"""Model inspection against independent computations: torch.autograd.functional.jacobian at
single points, the model's own argmax, and the accuracy a training run recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demo.app import inspection
from demo.engine.config import RunConfig
from demo.engine.record import Recorder
from demo.engine.train import build_model, train


def oracle_jacobian(model, x: torch.Tensor) -> torch.Tensor:
    """(C, *x.shape) for one input x (no batch dim), one functional jacobian call."""
    return torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], x)


@pytest.fixture(scope="module")
def moons_run():
    """A short real run on 2-D data: its record and the weights of its last evaluation."""
    cfg = RunConfig(dataset="moons", steps=40, eval_every=40, report_every=10, robustness=False, width=32)
    recorder = Recorder(cfg)
    for event in train(cfg):
        recorder.add(event)
    return recorder.record, recorder.state_dict


@pytest.fixture(scope="module")
def digits_model():
    cfg = RunConfig(dataset="digits", width=16, depth=1)
    record = {"config": cfg.to_dict(), "dataset": {"input_shape": [1, 8, 8], "num_classes": 10}}
    model = build_model(cfg, (1, 8, 8), 10)
    return record, inspection.load_model(record, model.state_dict())


def test_loaded_model_and_data_reproduce_the_recorded_accuracy(moons_run):
    record, weights = moons_run
    model = inspection.load_model(record, weights)
    dataset = inspection.load_data(record)
    with torch.no_grad():
        accuracy = (model(dataset.x_test).argmax(1) == dataset.y_test).sum().item() / len(dataset.y_test)
    assert accuracy == pytest.approx(record["evaluations"][-1]["test_accuracy"], abs=1e-9)
    assert not model.training


def test_grid_spans_the_points_with_a_margin():
    points = torch.tensor([[0.0, -1.0], [2.0, 3.0], [1.0, 0.0]])
    xs, ys, xy = inspection.grid(points, resolution=5, margin=0.25)
    assert xs[0].item() == pytest.approx(-0.5) and xs[-1].item() == pytest.approx(2.5)
    assert ys[0].item() == pytest.approx(-2.0) and ys[-1].item() == pytest.approx(4.0)
    assert xy.shape == (25, 2)
    assert xy[2 * 5 + 3].tolist() == [xs[3].item(), ys[2].item()]  # row-major: y then x


def test_field_norm_at_grid_points_equals_the_jacobian_norm_there(moons_run):
    record, weights = moons_run
    model = inspection.load_model(record, weights)
    dataset = inspection.load_data(record)
    field = inspection.norm_field(model, dataset.x_test, resolution=7)
    assert field["norms"].shape == field["predictions"].shape == (7, 7)
    assert field["num_classes"] == 2
    for i, j in [(0, 0), (1, 5), (6, 2), (3, 3)]:  # off the diagonal too: catches swapped axes
        point = torch.tensor([field["xs"][j], field["ys"][i]], dtype=torch.float32)
        jac = oracle_jacobian(model, point)  # (C, 2)
        assert field["norms"][i, j] == pytest.approx(jac.norm().item(), rel=1e-5, abs=1e-6)
        with torch.no_grad():
            assert field["predictions"][i, j] == model(point.unsqueeze(0)).argmax().item()
    assert field["of"] == "logits"  # what the oracle differentiated: the figure's colour bar says so


def test_field_sees_both_classes_on_trained_moons(moons_run):
    record, weights = moons_run
    field = inspection.norm_field(inspection.load_model(record, weights), inspection.load_data(record).x_test)
    assert set(np.unique(field["predictions"]).tolist()) == {0, 1}  # a decision boundary to draw


def test_example_jacobian_matches_the_oracle(digits_model):
    record, model = digits_model
    dataset = inspection.load_data(record)
    example = inspection.example_jacobian(model, dataset, 7)
    x = dataset.x_test[7]
    np.testing.assert_allclose(example["jacobian"], oracle_jacobian(model, x).numpy(), rtol=1e-5, atol=1e-7)
    assert example["jacobian"].shape == (10, 1, 8, 8)
    np.testing.assert_array_equal(example["input"], x.numpy())
    with torch.no_grad():
        probabilities = torch.softmax(model(x.unsqueeze(0)), dim=1)[0]
    np.testing.assert_allclose(example["probabilities"], probabilities.numpy(), rtol=1e-6)
    assert example["prediction"] == probabilities.argmax().item()
    assert example["label"] == dataset.y_test[7].item()
    assert example["kind"] == "image" and example["class_names"][3] == "3"
    assert example["of"] == "logits"  # the oracle's outputs are the model's logits


def test_example_index_wraps_around(digits_model):
    record, model = digits_model
    dataset = inspection.load_data(record)
    size = len(dataset.x_test)
    assert inspection.example_jacobian(model, dataset, size + 2)["index"] == 2


def test_perturbed_inputs_and_predictions(digits_model):
    record, model = digits_model
    dataset = inspection.load_data(record)
    clean = inspection.perturbed(model, dataset, attack="noise", strength=0.0, count=4)
    np.testing.assert_array_equal(clean["perturbed"], clean["inputs"])
    attacked = inspection.perturbed(model, dataset, attack="fgsm", strength=0.1, count=4)
    step = np.abs(attacked["perturbed"] - attacked["inputs"])
    assert step.max() == pytest.approx(0.1, abs=1e-6)  # an L-inf step of epsilon, clipped to [0, 1]
    assert attacked["perturbed"].min() >= 0.0 and attacked["perturbed"].max() <= 1.0
    with torch.no_grad():
        want = model(torch.from_numpy(attacked["perturbed"])).argmax(1).tolist()
    assert attacked["predictions"] == want
    assert attacked["labels"] == dataset.y_test[:4].tolist()
