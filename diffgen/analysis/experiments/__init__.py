"""The report's built-in experiments, one plugin module each (diffgen.analysis.experiment):
importing this package registers them in order."""
from diffgen.analysis.experiments import (e1_optimum_copies, e2_model_novelty, e3_gap,  # noqa: F401
                                          e4_hybrid, e5_reproducibility, e6_emm,
                                          e7_mutual_information, e8_theories)
