"""memoreport: ``memo report``'s self-contained HTML reports of dataset folders, pre-training
runs and fine-tuning outputs (matplotlib, no torch). The entry point:
:func:`memoreport.report.write_report`; the kinds of folder: :data:`memoreport.report.KINDS`."""
