"""`python -m demo ...`: the command line lives in demo.cli."""
from demo.cli.main import main

raise SystemExit(main())
