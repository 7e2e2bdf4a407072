"""Output safety helpers: one run per folder, names that stay inside it, inputs never overwritten."""
from __future__ import annotations

import subprocess
import sys

import pytest

from landscape.errors import OutputError
from landscape.io import check_name, check_not_input, output_lock
from tests.conftest import ROOT


def test_a_second_run_into_the_same_folder_fails_and_a_dead_run_leaves_no_lock(tmp_path):
    code = "import sys\nfrom landscape.io import output_lock\nwith output_lock(sys.argv[1]): pass"
    with output_lock(tmp_path):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode != 0 and "is in use by another run" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    killed = subprocess.run([sys.executable, "-c", "import os, sys\nfrom landscape.io import output_lock\n"
                             "with output_lock(sys.argv[1]): os._exit(9)", str(tmp_path)], cwd=ROOT)
    assert killed.returncode == 9
    with output_lock(tmp_path):  # the OS released the dead run's lock
        pass


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "/etc/passwd", "a\\b"])
def test_names_must_be_one_path_component(name):
    with pytest.raises(OutputError, match="one plain file name"):
        check_name(name, "figure id")
    assert check_name("contours-ce", "figure id") == "contours-ce"


def test_an_output_that_is_an_input_is_refused(tmp_path):
    src = tmp_path / "dirs.npz"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="is also an input"):
        check_not_input(tmp_path / "." / "dirs.npz", [None, src], "surface")
    assert check_not_input(tmp_path / "surface.npz", [src]) == tmp_path / "surface.npz"
