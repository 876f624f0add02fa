"""memoreport: ``memo report``'s self-contained HTML reports of dataset folders, pre-training
runs, fine-tuning outputs and ``memo prep`` outputs (matplotlib, no torch). The entry point:
:func:`memoreport.report.write_report`; the kinds of folder: :data:`memoreport.report.KINDS`."""
