"""vlif-pipeline: raw Amazon review dumps -> captions, features, graphs -> trained VLIF models.

    snakemake --cores 2 results/demo/metrics.json     # offline demo, end to end
    snakemake --cores 8 results/baby/table.md         # VLIF against the baselines
"""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
# Jobs run `python -m vlif_pipeline`: the interpreter running Snakemake comes first on their PATH,
# so `.venv/bin/snakemake` works without activating the venv; a conda env (--sdm conda) puts its
# own bin folder before this one when it is activated for a job.
os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
# envs/*.yaml install the package from here (conda builds them from copies in .snakemake/conda).
os.environ.setdefault("VLIF_PIPELINE_ROOT", workflow.basedir)
from vlif_pipeline import config as cfgmod  # noqa: E402


configfile: "config/config.yaml"


try:
    cfgmod.validate(config, Path(workflow.basedir) / "config" / "schema.yaml")
except cfgmod.ConfigError as err:
    raise WorkflowError(str(err)) from None


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/captions.smk"
include: "rules/features.smk"
include: "rules/graphs.smk"
include: "rules/train.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        "results/demo/metrics.json",
