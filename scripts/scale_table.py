"""Rule scale_table: results/{dataset}/scale.csv, the NSO methods' pose AUC with and without pose.scale_aware,
over every retrieved pair and over those with a large true scale change."""
from vop.scale_aware import scale_table
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
scale_table([{**run, "pose_csv": pose, "overlap_csv": overlap}
             for run, pose, overlap in zip(snakemake.params.runs, snakemake.input.pose, snakemake.input.overlap,
                                           strict=True)], snakemake.output[0])
