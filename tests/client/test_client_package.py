"""The client installs and imports without the server stack."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from support.repo import SERVICES_DIR


def test_the_client_distribution_needs_only_cryptography_dcap_qvl_and_httpx() -> None:
    project = tomllib.loads((SERVICES_DIR / "client" / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert names == {"cryptography", "dcap-qvl", "httpx"}


def test_importing_the_client_loads_no_server_module() -> None:
    probe = (
        "import sys, cocoon.client, cocoon.client.server, cocoon.client.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aiokafka', 'kafka', 'fastapi', 'starlette', 'uvicorn', 'fastavro', 'typer')"
        " or m.startswith('cocoon.core'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
