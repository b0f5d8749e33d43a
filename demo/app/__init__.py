"""The Gradio app: `ui.build_demo` composes the tabs of `views/` with the shared pieces here
(controls, inputs, session, streaming, plots, inspection, limits, server, page, zerogpu).
The only layer that imports gradio."""
