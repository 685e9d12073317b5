"""The independence audit: how many independent refusal pathways does a model have, and is its refusal
fail-open or fail-closed? `audit_job` (CLI: `failclosed audit`) loads, audits and writes a report;
`audit_model` / `run_audit` return the result; the pieces work on their own (docs/audit.md)."""

from failclosed_interp.audit.analyses import (
    JointCurves, RepIndependence, independent_pathways, joint_curves, pairwise_ablation,
    representational_independence, single_ablation, steering_sweep,
)
from failclosed_interp.audit.discover import Discovery, discover_directions
from failclosed_interp.audit.job import (
    AuditConfig, AuditResult, audit_job, audit_model, format_audit, load_subject, run_audit, verdict,
)
from failclosed_interp.audit.meter import AblationRefusal, MeasureConfig, RefusalMeter
from failclosed_interp.splits import PromptSplits
from failclosed_interp.audit.redundancy import Redundancy, greedy_order, redundancy_number
from failclosed_interp.audit.report import audit_figures, compare_html, comparison_table, report_html, write_audit

__all__ = [
    "AblationRefusal", "AuditConfig", "AuditResult", "Discovery", "JointCurves", "MeasureConfig", "PromptSplits",
    "Redundancy", "RefusalMeter", "RepIndependence", "audit_figures", "audit_job", "audit_model", "compare_html",
    "comparison_table", "discover_directions", "format_audit", "greedy_order", "independent_pathways", "joint_curves",
    "load_subject", "pairwise_ablation", "redundancy_number", "report_html", "representational_independence",
    "run_audit", "single_ablation", "steering_sweep", "verdict", "write_audit",
]
