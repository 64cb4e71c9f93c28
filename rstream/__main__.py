"""`python -m rstream`: the same command line as the `rstream` console script."""
from rstream.cli import main

raise SystemExit(main())
