"""The venv that `make test` builds has a torch / torchvision pair whose compiled ops load.

A CPU-only torch with a CUDA-built torchvision imports fine but fails on the first op with
"operator torchvision::nms does not exist", so run one and check it against a plain-Python oracle.
"""

from __future__ import annotations

import torch


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def greedy_nms(boxes, scores, threshold):
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def test_torchvision_compiled_op_runs():
    from torchvision.ops import box_iou, nms

    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=gen) * 10
    sizes = torch.rand(40, 2, generator=gen) * 4 + 0.5
    boxes = torch.cat([corners, corners + sizes], dim=1)
    scores = torch.rand(40, generator=gen)
    kept = nms(boxes, scores, 0.3).tolist()
    assert kept == greedy_nms(boxes.tolist(), scores.tolist(), 0.3)
    assert 1 < len(kept) < 40  # the case exercises suppression
    want = torch.tensor([[iou(a, b) for b in boxes.tolist()] for a in boxes.tolist()])
    torch.testing.assert_close(box_iou(boxes, boxes), want, rtol=1e-5, atol=1e-6)
