"""The training engine: RunConfig, datasets, `train(cfg) -> events`, run records, regularisers,
sweeps and DDP. Torch only: nothing here imports gradio, the app, the CLI or the budget."""
