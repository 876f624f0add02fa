"""memoreport: ``memo report``'s self-contained HTML reports of dataset folders, pre-training
runs and fine-tuning outputs (matplotlib, no torch)."""
from .report import KINDS, ReportError, report_kind, write_report

__all__ = ["KINDS", "ReportError", "report_kind", "write_report"]
