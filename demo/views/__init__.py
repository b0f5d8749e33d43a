"""The app's views: one module per tab (functions, then layout, then wiring), and the session.

`demo.ui.build_demo` composes them. Handlers only adapt values: UI values -> RunConfig or run
records -> `demo.inspect` / `demo.plots` -> figures. No module here holds mutable state: a
visitor's runs live in their session's gr.State (see `session`).
"""
