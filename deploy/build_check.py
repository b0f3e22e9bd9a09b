"""The app image's last build step (`python -m deploy.build_check`, as root in /app): every weight file against the
model card's sha256, so that a corrupted copy fails the build rather than the first analysis (the app checks them
again at load), and every module of core/ and ui/ imported, so that a missing or broken package fails the build too.
The imports also write the bytecode of what the app runs (the wheels are installed without it: compiling all of them
took about 400 MB, most of it for modules the app never imports); the non-root user then starts from it."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import core
import ui
from core.decisions.model_card import load_card
from core.io.weights_io import verified_bytes


def main() -> int:
    card = load_card("weights")
    for name in card.files:
        verified_bytes("weights", name, card)
    modules = [m.name for package in (core, ui) for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for name in [*modules, "streamlit.web.cli", "streamlit.web.server.server"]:
        importlib.import_module(name)
    print(f"[build_check] {len(card.files)} weight files match model card {card.version}; {len(modules)} modules import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
