"""``python -m rnnlab`` (also how torchrun starts it: ``torchrun ... -m rnnlab train``)."""

import sys

from .cli import main

sys.exit(main())
