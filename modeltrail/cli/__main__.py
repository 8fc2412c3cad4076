"""`python -m modeltrail.cli` runs the modeltrail command."""

from modeltrail.cli import main

main()
