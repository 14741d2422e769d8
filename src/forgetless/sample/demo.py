"""The demo's config and data, from the installed package alone.

The demo config ships inside the package (``demo.yaml``); its sample data is generated, seeded and
byte-identical to ``examples/data/pharma``, into the user cache once. So ``forgetless demo`` runs
the same from a source checkout and from an installed wheel.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

from ..cache import cache_dir
from ..config import RunConfig, load_config
from . import generate

DEMO_CONFIG = "demo.yaml"
_SEED = 0


def demo_folder() -> Path:
    """A folder holding the demo config and, under data/pharma, the sample domain (made once, atomically)."""
    root = cache_dir("sample") / f"pharma-seed{_SEED}"
    if not (root / DEMO_CONFIG).exists():
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
        generate.write(tmp / "data" / "pharma", seed=_SEED)
        (tmp / DEMO_CONFIG).write_text(resources.files(__package__).joinpath(DEMO_CONFIG).read_text(encoding="utf-8"), encoding="utf-8")
        try:
            tmp.rename(root)
        except OSError:  # another process made it first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def demo_config(overrides: list[str] | None = None) -> RunConfig:
    """The demo's run config, data paths pointing at the generated sample domain."""
    return load_config(demo_folder() / DEMO_CONFIG, overrides or [])
