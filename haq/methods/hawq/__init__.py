"""``hawq``: HAWQ-V3, Hessian-aware sensitivity and an integer linear program.

* :mod:`.method` - the method (sensitivities, budget rows, the search loop) and its ``SPEC``.
* :mod:`.hessian` - Hutchinson estimates of per-layer Hessian traces (cached).
* :mod:`.ilp` - the multiple-choice ILP, solved with SciPy's ``milp`` (HiGHS).
* :mod:`.published` - HAWQ-V3's released ILP rebuilt from its published inputs (reproduction).
"""

from haq.methods.hawq.method import SPEC, HawqOptions, run_hawq

__all__ = ["SPEC", "HawqOptions", "run_hawq"]
