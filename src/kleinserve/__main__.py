import sys

from kleinserve.cli import main

sys.exit(main())
