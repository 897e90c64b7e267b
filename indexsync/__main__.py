"""Allow `python -m indexsync`."""

from indexsync.cli import main

raise SystemExit(main())
