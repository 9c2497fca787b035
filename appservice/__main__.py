import sys

from appservice.main import main

sys.exit(main())
