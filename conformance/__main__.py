"""``python -m pedagle_conformance record|run|list`` (the same as ``pedagle conformance ...``)."""

import sys

from .cli import main

sys.exit(main())
