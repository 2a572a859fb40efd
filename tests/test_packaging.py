"""earmark installs as one package of its own name: a wheel of this checkout holds only `earmark/`
(and its metadata), and installed into a site that already has packages called `service`,
`index` and `fingerprint` it neither shadows them nor is shadowed by them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERIC_NAMES = ("service", "index", "fingerprint")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from this checkout, as `pip install .` would build it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=240)
    (built,) = out.glob("earmark-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"earmark"}
    # The console's templates and static files travel with it.
    assert "earmark/service/console/templates/base.html" in names
    assert "earmark/service/console/static/VENDORED.md" in names


def test_installed_beside_packages_with_generic_names(wheel, tmp_path):
    site = tmp_path / "site"
    for name in GENERIC_NAMES:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"WHO = 'another project {name}'\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=240)
    probe = (
        "import earmark, index, service, fingerprint\n"
        "from earmark.service.cli import main\n"
        "from earmark.service.api.app import create_app\n"
        "print(earmark.__file__)\n"
        "print(service.WHO, index.WHO, fingerprint.WHO)\n"
    )
    # From an empty working directory, so that this checkout is not what Python finds first.
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    installed, others = result.stdout.splitlines()
    assert Path(installed).is_relative_to(site)
    assert others == "another project service another project index another project fingerprint"
