"""Entry point for spark-submit and Databricks Python tasks.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/batch_chat.py \
        --config conf/local.yaml [--set section.key=value ...]
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
