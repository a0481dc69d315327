"""Rule matches: a method's shard of the scene's matches store, its pairs matched once per scene (vop.match_store)."""
import os

# Before torch loads OpenMP: its threads sleep when idle instead of spinning, which on a machine busier than
# its cores (other jobs, other users) made the CPU matcher 2-3x slower (benchmarks/pose.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from vop.conf import MatchingConf  # noqa: E402
from vop.match_store import build_scene_shard  # noqa: E402
from vop.utils import setup_logging  # noqa: E402

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
build_scene_shard(snakemake.output[0], snakemake.input.pairs, snakemake.input.local_features,
                  MatchingConf.from_dict(snakemake.params.conf, "matching"))
