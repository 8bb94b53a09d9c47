import sys

from lossgen.cli import main

sys.exit(main())
