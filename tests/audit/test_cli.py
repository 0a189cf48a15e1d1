"""dvt-audit end to end on a small model: tables, report, exit statuses."""

from __future__ import annotations

import json

import pytest

from dvt_ms.audit import allowlist
from dvt_ms.audit.cli import main
from tests.helpers import TINY_CONFIG

SMALL = ["-c", TINY_CONFIG, "--depth", "1", "--embed_dim", "32", "--batch_size", "2"]


def test_inference_graphs_pass_with_a_table_and_a_report(tmp_path, capsys):
    status = main([*SMALL, "--graphs", "inference", "--audit_dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 0, err
    for name in ("validation", "stage_1", "stage_3", "export_2"):
        assert f"== {name}: " in out
    assert "audit passed: 7 graphs" in out
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["passed"] and set(report["graphs"]) >= {"validation", "stage_1", "export_3"}
    assert report["graphs"]["export_1"]["kind"] == "export"
    assert any(row["primitive"] == "Softmax" for row in report["graphs"]["stage_1"]["primitives"])


@pytest.mark.slow
def test_a_primitive_off_the_allowlist_fails_with_its_name_and_source(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(allowlist.ALLOWED, "Softmax")
    status = main([*SMALL, "--graphs", "inference", "--audit_dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert status == 1
    assert "stage_1: not-ai-core: Softmax has no AI Core kernel" in err
    assert "dvt_ms/models/layers/attention.py" in err
    assert not json.loads((tmp_path / "audit.json").read_text())["passed"]


def test_bad_usage_exits_2(capsys):
    assert main(["-c", TINY_CONFIG, "--graphs", "everything"]) == 2
    assert "graphs" in capsys.readouterr().err
