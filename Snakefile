# The MaIR reproduction pipeline (docs/pipeline.md). Thin on purpose: the rules live in workflow/rules/, the
# settings in params/pipeline.yaml, every step is a `mair` command.
#
#   snakemake --cores all reproduce_tables                       # demo scope: all 17 experiments, tiny, CPU
#   snakemake --cores all reproduce_tables --config scope=paper  # the full reproduction (results/trained/paper/)
#   snakemake --profile workflow/profiles/slurm reproduce_tables # paper scope on a SLURM cluster
#   snakemake --cores all reproduce_tables --config scope=paper weights=published  # the authors' checkpoints
from snakemake.utils import min_version

min_version("9.0")


configfile: "params/pipeline.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    """Default target: reproduce_tables."""
    default_target: True
    localrule: True
    input:
        rules.reproduce_tables.input,
