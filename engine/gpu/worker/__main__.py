"""`python -m engine.gpu.worker [--gpu N]`: one worker process in the foreground."""

import sys

from engine.gpu.worker.process import main

sys.exit(main())
