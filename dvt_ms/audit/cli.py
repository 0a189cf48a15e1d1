"""``dvt-audit``: compile dvt_ms's graphs for a config and check that Ascend 910 runs all of them on its AI Cores.

Usage::

    dvt-audit -c configs/dvt_tiny_cpu.yaml
    dvt-audit -c configs/dvt_t2t_vit_12.yaml --batch_size 2 --graphs train

It compiles dvt-train's step at O0 and O2 (dropout, attention dropout and drop path on, soft targets,
EMA, clipping, the dynamic loss scaler under O2; under msrun with ``--distribute True`` the gradient
all-reduce too), the validation forward, every early-exit stage and every export graph, reads MindSpore's
IR dump of each, prints a table of primitives with counts and dtypes per graph, and fails naming the
primitive, the dtype or shape and the source line for: a float64 tensor; a primitive without AI Core
kernels on 910A/910B (``dvt_ms/audit/allowlist.py``); a fused CPU kernel (``Custom``) in a graph audited
as Ascend compiles it; a dynamic dimension in the train step, validation or a stage. The report goes to
``<audit_dir>/audit.json``. Exit status: 0 every graph passes, 1 a rule is broken (or a graph does not
compile), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .. import interrupts
from ..command import run_command
from ..options import AuditSettings, parse_command

PROG = "dvt-audit"


class AuditFailed(RuntimeError):
    """A graph breaks a rule: the message lists every finding."""


def load_settings(argv: Sequence[str] | None) -> AuditSettings:
    """Defaults < YAML < command line (the YAML of dvt-train: its keys are this command's flags too)."""
    return parse_command(AuditSettings, argv, __doc__.split("\n\n")[0], PROG)


def audit(settings: AuditSettings) -> tuple[list[str], list[Any], dict[str, Any]]:
    """Compile and check the graphs of ``settings``: ``(tables, findings, report)``."""
    from ..train.distributed import init_runtime
    from .graphs import audit_config, inference_graphs, train_graph
    from .ir import capture, read_graphs
    from .rules import check_graphs, format_table, primitive_table

    settings = audit_config(settings)
    runtime = init_runtime("CPU", 0, settings.distribute, settings.seed)
    graphs = []
    if settings.graphs in ("all", "train"):
        graphs += [train_graph(settings, runtime, level) for level in ("O0", "O2")]
    if settings.graphs in ("all", "inference"):
        graphs += inference_graphs(settings, settings.batch_size)
    dump_root = os.path.join(settings.audit_dir, "ir") if settings.keep_dumps else tempfile.mkdtemp(prefix="dvt_audit_")
    tables, findings, report = [], [], {"model": settings.model, "graphs": {}}
    try:
        for graph in graphs:
            interrupts.check()  # Ctrl-C: stop between graphs
            start = time.perf_counter()
            with capture(os.path.join(dump_root, graph.name)) as files:
                try:
                    graph.run()
                except (RuntimeError, TypeError, ValueError) as err:
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    raise AuditFailed(f"{graph.name} does not compile: {first}") from None
            seconds = time.perf_counter() - start
            if not files:
                raise AuditFailed(f"{graph.name}: MindSpore wrote no IR dump (was the graph compiled before?)")
            ir = read_graphs(files)
            rows = primitive_table(ir)
            found = check_graphs(graph.name, ir, graph.kind)
            tables.append(format_table(graph.name, rows, seconds))
            findings += found
            report["graphs"][graph.name] = {
                "kind": graph.kind.name, "seconds": round(seconds, 1), "nodes": sum(n for *_, n in rows),
                "primitives": [{"primitive": p, "dtypes": d, "count": n} for p, d, n in rows],
                "findings": [asdict(f) for f in found]}
    finally:
        if not settings.keep_dumps:
            shutil.rmtree(dump_root, ignore_errors=True)
    return tables, findings, report


def run(settings: AuditSettings) -> str:
    """Audit, print every table, write ``audit.json``; raise :class:`AuditFailed` listing the findings."""
    from ..files import atomic_output

    tables, findings, report = audit(settings)
    print("\n\n".join(tables), flush=True)
    report["passed"] = not findings
    os.makedirs(settings.audit_dir, exist_ok=True)
    path = os.path.join(settings.audit_dir, "audit.json")
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    if findings:
        raise AuditFailed(f"{len(findings)} rule(s) broken (report: {path}):\n" + "\n".join(f"  {f}" for f in findings))
    return f"audit passed: {len(report['graphs'])} graphs, no float64, every primitive on the AI Core allowlist, " \
           f"static shapes where training compiles (report: {path})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dvt-audit``; returns the exit status."""
    from ..checkpoint import CheckpointError
    from ..train.distributed import LaunchError

    return run_command(PROG, lambda: load_settings(argv), run, (AuditFailed, LaunchError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
