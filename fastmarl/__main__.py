import os
import sys

from fastmarl.cli import main

code = main()
if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
    # A torchrun rank (`torchrun ... -m fastmarl train`, `fastmarl train --nproc N`): its run
    # folder is written (atomically) and its process group destroyed by now. Skip interpreter
    # finalisation, where C++ threads of the distributed stack can still abort a finished rank:
    # seen once in CI on a 1-iteration QMIX run (exit -6, "terminate called without an active
    # exception", no Python traceback; not reproduced in 24 local runs), which turned a good run
    # into a failed one. The atexit handlers still run, with the interpreter whole (they release
    # multiprocessing's semaphores: skipping them printed "leaked semaphore objects" warnings).
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
sys.exit(code)
