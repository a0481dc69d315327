"""Rule ground_truth: gt.h5 (K, T_w2cam, image sizes, overlap, tracks) of one scene, from its native files;
tracks triangulated from the scene's local features where it has poses but no 3D points."""
from vop.conf import NsoConf, TriangulationConf
from vop.datasets import open_scene
from vop.ground_truth import write_scene_ground_truth
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
write_scene_ground_truth(open_scene(**snakemake.params.reader), snakemake.output[0],
                         getattr(snakemake.input, "local_features", None),
                         TriangulationConf.from_dict(snakemake.params.triangulation or {}, "triangulation"),
                         num_threads=snakemake.threads,
                         nso=NsoConf.from_dict(snakemake.params.nso, "nso"))
