import sys

from raybilevel.cli import main

sys.exit(main())
