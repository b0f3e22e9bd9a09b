"""The runtime install: what `pip install -r requirements.txt` puts on disk, and whether torch is the CPU build.

The runtime is requirements.txt and everything it pulls in (its distributions' `Requires-Dist`, extras followed where
the requirement names them, environment markers honoured), measured from the installed files' RECORD entries without
bytecode (`*.pyc`): pip writes bytecode for every module at install unless told `--no-compile`, as the container's
build does, and Python writes it again for what is imported. The development tools of requirements-dev.txt are not
part of it. `python -m bench.install_size` prints it.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import re
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
CUDA_DISTRIBUTIONS = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path = REPO / "requirements.txt") -> list[Requirement]:
    """The requirement lines of a requirements file (comments, options and -r includes skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def runtime_distributions(roots: list[Requirement]) -> dict[str, md.Distribution]:
    """canonical name -> installed distribution, for the requirements and all they depend on."""
    found: dict[str, md.Distribution] = {}
    todo = [(r, frozenset(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = _canonical(req.name)
        if name in found:
            continue
        found[name] = dist = md.distribution(req.name)
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((sub, frozenset(sub.extras)))
    return found


def installed_bytes(dist: md.Distribution) -> int:
    """Bytes of the distribution's installed files, bytecode excluded."""
    total = 0
    for file in dist.files or []:
        if file.suffix == ".pyc":
            continue
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def runtime_install() -> dict:
    """Size of the runtime install in GB (1e9 bytes), its largest distributions, and the torch build."""
    import torch

    dists = runtime_distributions(requirements())
    sizes = {name: installed_bytes(dist) for name, dist in dists.items()}
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    return {"gb": round(sum(sizes.values()) / 1e9, 3), "distributions": len(sizes),
            "largest_mb": {name: round(size / 1e6) for name, size in largest},
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_distributions": sorted(n for n in sizes if CUDA_DISTRIBUTIONS.match(n))}


if __name__ == "__main__":
    print(json.dumps(runtime_install(), indent=1))
