import sys

from whyprobe.commands import main

sys.exit(main())
