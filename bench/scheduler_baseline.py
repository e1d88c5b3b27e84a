"""The scheduler as it was at an earlier commit, loaded from git, for side-by-side benchmarks.

The scheduler benches compare today's package (`cocoon.scheduler`) with an earlier scheduler in
the same process and the same run: by default the full-scan scheduler of `BASELINE_COMMIT`.
Rather than keeping a copy of the old code in the tree, its modules are read with `git show` and
imported under a private package name (`cocoon_scheduler_<commit>`), with their
`cocoon.scheduler.` imports pointed there. Needs a git checkout of the repository (the benches
are run from one).
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

BASELINE_COMMIT = "3de6817"  # main before issue 14: full scan per decision
SOURCE_DIR = "services/scheduler/src/cocoon/scheduler"
# Import order matters: each module may import the ones before it.
MODULES = ("index", "pool", "placement", "dispatcher")
REPO = Path(__file__).resolve().parent.parent


def _source(commit: str, module: str) -> str | None:
    found = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:{SOURCE_DIR}/{module}.py"],
        capture_output=True,
        text=True,
    )
    return found.stdout if found.returncode == 0 else None  # index.py is newer than 3de6817


def load(commit: str = BASELINE_COMMIT) -> types.SimpleNamespace:
    """The `pool`, `placement` and `dispatcher` modules of `commit` (imported once)."""
    name = f"cocoon_scheduler_{commit}"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules[name] = package
        for module_name in MODULES:
            source = _source(commit, module_name)
            if source is None:
                continue
            module = types.ModuleType(f"{name}.{module_name}")
            module.__file__ = f"<{commit}:{SOURCE_DIR}/{module_name}.py>"
            sys.modules[module.__name__] = module
            exec(
                compile(source.replace("cocoon.scheduler.", f"{name}."), module.__file__, "exec"),
                module.__dict__,
            )
            setattr(package, module_name, module)
    package = sys.modules[name]
    return types.SimpleNamespace(
        **{m: getattr(package, m) for m in ("pool", "placement", "dispatcher")}
    )
