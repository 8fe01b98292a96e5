"""``python -m edgeprune.cli`` is the ``edgeprune`` command."""

from edgeprune.cli import main

raise SystemExit(main())
