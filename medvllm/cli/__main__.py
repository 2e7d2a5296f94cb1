import sys

from medvllm.cli.main import main

sys.exit(main())
