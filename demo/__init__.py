"""Jacobian Penalty Playground: the training engine, evaluation, budget, CLI and app around the
`jacobian_penalty` library.

One layer per folder; imports point down this list only (tests/test_layers.py checks it):

    demo.app         the Gradio app (the only layer that imports gradio); views/ holds the tabs
    demo.cli         `python -m demo train|sweep|list`
    demo.budget      how long and how much memory a run takes (the cost model, timing, memory, pace)
    demo.engine      RunConfig, datasets, train(cfg) -> events, records, regularisers, sweeps, DDP
    demo.evaluation  robustness, attacks, the forum thread's comparison
    models, jacobian_penalty
"""
