"""`python -m engine.worker [--gpu N]`: one worker process in the foreground."""

import sys

from engine.worker.process import main

sys.exit(main())
