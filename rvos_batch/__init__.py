"""rvos_batch: auto-label video corpora with masks using RVOS, as a resumable, sharded Ray batch job.

Data flows one way: corpus reader -> frame decode -> model -> masks and RLE -> writer -> commit.
Only ``rvos_batch.job.driver`` and ``rvos_batch.cli.label`` import Ray; everything else runs without it.
"""

__version__ = "0.1.0"
