"""``python -m hessop``: the same as the ``hessop`` console script."""

from hessop.cli.main import main

raise SystemExit(main())
