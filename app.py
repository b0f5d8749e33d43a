"""Entry point: `python app.py` locally and the Hugging Face Space's app_file.

Builds the Blocks from demo.app.ui and launches it; the module-level `demo` is what Gradio's
reload mode and the Space look for.
"""

from __future__ import annotations

from demo.app.ui import build_demo, launch

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
