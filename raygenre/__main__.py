"""``python -m raygenre``: the command line (``raygenre.cli``)."""

from raygenre.cli import app

app()
