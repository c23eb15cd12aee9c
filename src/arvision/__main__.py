import sys

from arvision.cli import main

sys.exit(main())
