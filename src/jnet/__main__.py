import sys

from jnet.cli import main

sys.exit(main())
