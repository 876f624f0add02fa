"""The recipes behind ``memo train`` and ``memo extract``: one file each, read top to bottom.
A recipe imports the shared memotrain modules, never another recipe (docs/TRAINER.md)."""
