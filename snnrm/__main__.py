"""``python -m snnrm`` is the ``snnrm`` command."""

from snnrm.cli import main

main()
