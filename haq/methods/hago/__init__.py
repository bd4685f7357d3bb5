"""``hago``: HAGO, the hardware specification drives a greedy search.

* :mod:`.method` - the greedy walk over the edges, HAGO's threshold estimators, ``SPEC``.
* :mod:`.greedy` - per-step accuracy-drop estimates and the descent to the budget.
"""

from haq.methods.hago.method import SPEC, HagoOptions, hago_scheme, run_hago

__all__ = ["SPEC", "HagoOptions", "hago_scheme", "run_hago"]
