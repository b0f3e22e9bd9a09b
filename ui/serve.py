"""Start the dashboard with the model already loading: `python -m ui.serve [streamlit run flags]` (what `bash run.sh
app` runs).

`streamlit run streamlit_app.py` executes the entry point only when the first browser connects, so the model load
(torch import, weights read and sha256-checked) would start only then. Here the Analyzer pool (ui.analyzers) starts
loading in the background before the server itself starts; the entry point's `pool()` call then finds the same
process-wide pool, already loading or loaded, and the first upload waits for what is left of one load.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ui.analyzers import pool

APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"


def main(argv: list[str] | None = None) -> int:
    pool()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
