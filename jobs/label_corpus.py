"""Ray job entrypoint: the labeling job for `ray job submit`, a KubeRay RayJob or the cluster launcher.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/label_corpus.py s3://bucket/corpus s3://bucket/labels --mode zero-shot

Takes exactly the arguments of `rvos-batch label`; inside a submitted job Ray's address comes from the
environment (RAY_ADDRESS), so the job joins the cluster it was submitted to.
"""

import sys

from rvos_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
