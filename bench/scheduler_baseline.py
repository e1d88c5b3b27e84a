"""The scheduler as it was before issue 14, loaded from git, for side-by-side benchmarks.

The scheduler benches compare today's package (`cocoon.scheduler`) with the full-scan scheduler
of commit `BASELINE_COMMIT` in the same process and the same run. Rather than keeping a copy of
the old code in the tree, its modules are read with `git show` and imported under a private
package name (`cocoon_scheduler_baseline`), with their `cocoon.scheduler.` imports pointed there.
Needs a git checkout of the repository (the benches are run from one).
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

BASELINE_COMMIT = "3de6817"  # main before issue 14: full scan per decision
PACKAGE = "cocoon_scheduler_baseline"
SOURCE_DIR = "services/scheduler/src/cocoon/scheduler"
# Import order matters: each module may import the ones before it.
MODULES = ("pool", "placement", "dispatcher")
REPO = Path(__file__).resolve().parent.parent


def _source(module: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:{SOURCE_DIR}/{module}.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def load() -> types.SimpleNamespace:
    """The baseline's `pool`, `placement` and `dispatcher` modules (imported once)."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = []
        sys.modules[PACKAGE] = package
        for name in MODULES:
            source = _source(name).replace("cocoon.scheduler.", f"{PACKAGE}.")
            module = types.ModuleType(f"{PACKAGE}.{name}")
            module.__file__ = f"<{BASELINE_COMMIT}:{SOURCE_DIR}/{name}.py>"
            sys.modules[module.__name__] = module
            exec(compile(source, module.__file__, "exec"), module.__dict__)
            setattr(package, name, module)
    package = sys.modules[PACKAGE]
    return types.SimpleNamespace(**{name: getattr(package, name) for name in MODULES})
