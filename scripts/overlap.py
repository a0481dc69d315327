"""Rule overlap: {method}/overlap.csv, the predicted NSO both ways and the relative scale of every retrieved
pair (vop: from its votes, in scores.csv; cls: the baseline from the backbone's patches), with the truth."""
import logging

from vop.conf import method_conf
from vop.nso import write_overlap
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
conf = method_conf(snakemake.params.method, f"methods.{snakemake.wildcards.method}")
info = write_overlap(conf.type, snakemake.input.scores, snakemake.input.gt, snakemake.output[0],
                     getattr(snakemake.input, "features", None), device="cpu", chance=conf.nso_chance)
logging.getLogger("vop.nso").info("%s: %s", snakemake.output[0], info)
