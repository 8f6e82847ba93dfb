"""``python -m gateway.sim --model NAME --params-b X ...``: run a simulated vLLM server."""

import sys

from .cli import main

sys.exit(main())
