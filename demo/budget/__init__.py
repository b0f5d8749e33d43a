"""How long and how much memory a run takes: one cost model of the methods (costs), step timing,
the memory model and the duration probe (pace). Never imports gradio or the app."""
