"""`python -m selective_lm <command>`: the same CLI as `slm`, and the entry point for torchrun:

    torchrun --nproc_per_node=8 -m selective_lm train --data ds --out runs/slm ...
"""
import sys

from .cli import main

sys.exit(main())
