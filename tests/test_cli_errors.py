"""Every ``wsgate`` command ends in one line and a documented exit code, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ECHO = "service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n"


def wsgate(*args: str | Path, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "wsgate", *map(str, args)], stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload, no-any-return]


def test_default_config_under_a_file_names_the_file(tmp_path):
    (tmp_path / "afile").write_text("")
    process = wsgate("default-config", tmp_path / "afile" / "sub")
    _, err = process.communicate(timeout=20)
    assert process.returncode == 1
    assert err.decode() == (
        f"wsgate: cannot write gateway.yaml to {tmp_path / 'afile' / 'sub'}: "
        f"{tmp_path / 'afile'} is a file, not a folder; choose another folder\n"
    )


def test_output_into_a_closed_pipe_exits_141_quietly(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text(ECHO)
    process = wsgate("check-config", config, stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # `| head -0`: the reader is gone before wsgate writes
    _, err = process.communicate(timeout=20)
    assert (process.returncode, err) == (141, b"")


def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path):
    fifo = tmp_path / "g.yaml"
    os.mkfifo(fifo)
    process = wsgate("run", fifo)
    with open(fifo, "w"):  # returns once wsgate opened the config: it now waits in read()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert (process.returncode, err) == (130, b"wsgate: interrupted\n")
