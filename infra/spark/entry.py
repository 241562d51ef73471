"""spark-submit entry point: ``spark-submit ... infra/spark/entry.py score --input ... --output ...``.

The arguments after the script are a ``trait`` command line. The session picks up spark-submit's master and
configuration (``spark_jobs.session`` sees the gateway and sets no master of its own).
"""

import sys

from trait.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
