"""``python -m prunec`` runs the CLI."""

from prunec.runtime.cli import main

raise SystemExit(main())
