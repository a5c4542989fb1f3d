import sys

from vidllm.cli import main

sys.exit(main())
