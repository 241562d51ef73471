"""Permission bits that apply to a child process even when the tests run as root, who reads and writes through
them: the child runs under ``setpriv`` without the capabilities that allow that (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

WITHOUT_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search"]


def unprivileged(tmp_path) -> list[str]:
    """The command prefix that makes permission bits apply to a child process (none for a normal user), or skip
    saying why not."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: permission bits cannot be made to apply")
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    seen = subprocess.run([*WITHOUT_DAC, "cat", str(probe)], capture_output=True, text=True)
    probe.unlink()
    if seen.returncode == 0 or "Permission denied" not in seen.stderr:
        pytest.skip(f"running as root and dropping the DAC capabilities did not apply permission bits: "
                    f"{seen.stderr.strip() or 'the file was read'}")
    return WITHOUT_DAC
