"""memo: the command line (``memo db ...``, ``memo quickstart``)."""
