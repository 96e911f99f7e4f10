"""`python -m hdlm ...` is the `hdlm` command; torchrun runs it on every rank:
`torchrun --nproc_per_node 4 -m hdlm train --config configs/ar-gpt2-small.yaml`."""

import sys

from hdlm.cli import main

sys.exit(main())
