"""The app's tabs: one module per tab (functions, then layout, then wiring), and nothing else.

`demo.app.ui.build_demo` composes them; the pieces several tabs share (controls, inputs, session,
streaming, duration, sharing) live one folder up in `demo.app`. Handlers only adapt values: UI
values -> RunConfig or run records -> `demo.app.inspection` / `demo.app.plots` -> figures. No
module here holds mutable state: a visitor's runs live in their session's store (`demo.app.session`).
"""
