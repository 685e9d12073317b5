"""The independence audit: how many independent refusal pathways does a model have, and is its refusal
fail-open or fail-closed? `audit_job` (CLI: `failclosed audit`) loads, audits and writes a report;
`audit_model` / `run_audit` return the result; the pieces work on their own (docs/audit.md)."""

from failclosed_interp.audit.analyses import (
    JointCurves, RepIndependence, common_steering, independent_pathways, joint_curves, leave_one_out,
    pairwise_ablation, representational_independence, single_ablation, steering_sweep,
)
from failclosed_interp.audit.config import AuditConfig
from failclosed_interp.audit.discover import Discovery, discover_directions
from failclosed_interp.audit.evidence import Evidence, Rise, ablation_evidence, addition_evidence, rising_refusal
from failclosed_interp.audit.job import audit_job, audit_model, load_subject, run_audit
from failclosed_interp.audit.meter import AblationRefusal, MeasureConfig, RefusalMeter
from failclosed_interp.audit.redundancy import Redundancy, greedy_order, redundancy_number, redundancy_over
from failclosed_interp.audit.report import audit_figures, compare_html, comparison_table, report_html, write_audit
from failclosed_interp.audit.result import AuditResult, format_audit
from failclosed_interp.audit.strongest import Strongest, strongest_direction
from failclosed_interp.audit.verdict import verdict
from failclosed_interp.splits import PromptSplits

__all__ = [
    "AblationRefusal", "AuditConfig", "AuditResult", "Discovery", "Evidence", "JointCurves", "MeasureConfig",
    "PromptSplits", "Redundancy", "RefusalMeter", "RepIndependence", "Rise", "Strongest", "ablation_evidence",
    "addition_evidence", "audit_figures", "audit_job", "audit_model", "common_steering", "compare_html",
    "comparison_table", "discover_directions", "format_audit", "greedy_order", "independent_pathways", "joint_curves",
    "leave_one_out", "load_subject", "pairwise_ablation", "redundancy_number", "redundancy_over", "report_html",
    "representational_independence", "rising_refusal", "run_audit", "single_ablation", "steering_sweep",
    "strongest_direction", "verdict", "write_audit",
]
