"""`python -m code_hero.cli`: the `code-hero` command."""

import sys

from code_hero.cli import main

sys.exit(main())
