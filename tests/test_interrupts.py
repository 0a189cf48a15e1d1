"""Ctrl-C inside a command: the first signal is a request that the command's loops act on where they can stop
cleanly, a second one stops at once; a real evaluation interrupted mid-run exits 130 with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from dvt_ms import interrupts
from dvt_ms.command import run_command
from tests.helpers import REPO, requires_sklearn, subprocess_env


def test_a_first_signal_is_a_request_a_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.deferred():
        interrupts.check()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)  # what MindSpore turns a SIGINT into while it runs a graph
        assert interrupts.requested()
        with interrupts.held():
            interrupts.check()  # held: the caller acts on it itself
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second one
    assert not interrupts.requested() and signal.getsignal(signal.SIGINT) is before


def test_immediate_restores_the_defaults_inside_deferred():
    with interrupts.deferred(), interrupts.immediate():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert not interrupts.requested()


def test_a_command_stopped_at_a_check_exits_130_with_one_line(capsys):
    def run(settings):
        os.kill(os.getpid(), signal.SIGINT)
        interrupts.check()
        return "finished"

    assert run_command("dvt-x", lambda: None, run, ()) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["dvt-x: interrupted"]


@pytest.mark.slow
@requires_sklearn
def test_ctrl_c_mid_evaluation_exits_130_with_one_line_and_leaves_nothing(tmp_path):
    data = str(tmp_path / "digits")
    assert subprocess.run([sys.executable, "-m", "dvt_ms", "digits", "--out", data], env=subprocess_env(),
                          capture_output=True).returncode == 0
    work, out = tmp_path / "work", tmp_path / "eval"
    work.mkdir()
    job = subprocess.Popen([sys.executable, "-m", "dvt_ms", "eval", "-c", os.path.join(REPO, "configs",
                            "dvt_digits_demo.yaml"), "--ckpt", os.path.join(REPO, "demo", "dvt_digits_demo.ckpt"),
                            "--data_dir", data, "--eval_mode", "2", "--batch_size", "8", "--output_dir", str(out)],
                           cwd=work, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        seen = []
        for line in job.stderr:  # the calibration pass has started: its progress bar's first line
            seen.append(line)
            if line.startswith("calibration"):
                break
        os.killpg(job.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
        _, rest = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, "".join(seen) + rest
    ours = [line for line in rest.splitlines() if line.startswith("dvt-eval:")]
    assert ours == ["dvt-eval: interrupted"] and "Traceback" not in rest, rest
    assert os.listdir(work) == []
    assert not out.exists() or os.listdir(out) == []
