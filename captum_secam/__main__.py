"""``python -m captum_secam`` runs the ``captum-secam`` command line."""

import sys

from captum_secam.cli import main

if __name__ == "__main__":
    sys.exit(main())
