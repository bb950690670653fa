"""`python -m medimg predict|serve ...`, the same as the `medimg` command."""

from medimg.cli import main

main()
