import sys

from fastmarl.cli import main

sys.exit(main())
