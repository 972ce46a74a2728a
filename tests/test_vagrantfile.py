"""The Vagrantfile, checked by Vagrant itself (Debian's vagrant package; `make test` installs it).

No hypervisor runs on the test machines, so `vagrant validate --ignore-provider` is the check:
it loads the Vagrantfile and validates every setting outside the provider blocks, which is what
a typo or a removed option breaks. The box itself is booted on users' machines only; the
deploy it runs is proven on booted test hosts (tests/deploy/).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def validate(directory: Path, home: Path) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (make test installs it: Debian's vagrant package)")
    return subprocess.run(
        [vagrant, "validate", "--ignore-provider", "--no-tty"],
        cwd=directory,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "VAGRANT_HOME": str(home / "vagrant.d")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_vagrantfile_is_valid_and_boots_debian_13(tmp_path: Path):
    box = tmp_path / "box"
    box.mkdir()
    shutil.copy(ROOT / "Vagrantfile", box / "Vagrantfile")
    result = validate(box, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    boxes = re.findall(
        r'^\s*config\.vm\.box\s*=\s*"([^"]+)"', (ROOT / "Vagrantfile").read_text(), re.M
    )
    assert boxes == ["debian/trixie64"]


def test_validate_refuses_a_broken_vagrantfile(tmp_path: Path):
    """The check bites: a misspelt setting fails it."""
    box = tmp_path / "box"
    box.mkdir()
    text = (ROOT / "Vagrantfile").read_text().replace("config.vm.hostname", "config.vm.hostnam")
    (box / "Vagrantfile").write_text(text)
    result = validate(box, tmp_path)
    assert result.returncode != 0
    assert "hostnam" in result.stdout + result.stderr
