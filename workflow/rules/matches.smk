# Matches: each method's pairs in its shard of the scene's matches store (vop.match_store), every unordered
# pair matched once per scene: a shard's job copies the pairs the scene's other shards (and its own previous
# version, kept by `update`) hold, valid for the same features and conf, and matches only the rest; the
# jobs of a scene take turns. A shard reruns when its method's pairs, the local features or `matching`
# change, and then reruns its readers (the method's pose; verify) and nothing else.


rule matches:
    """Match a method's pairs (mutual NN + ratio test, batched), each unordered pair once per scene."""
    input:
        unpack(matches_inputs),
    output:
        update("results/{dataset}/{scene}/{method}/matches.h5"),
    params:
        conf=canonical(config["matching"]),
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb(4000),
    log:
        "logs/{dataset}/{scene}/{method}/matches.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/matches.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/matches.py"
