"""The NetScaler state model: objects, bindings, kinds, names, ownership markers and plan operations.

Pure data and pure functions, no I/O. Everything above builds on it: the planner compares desired
and actual `state`, the executor carries out `ops`, and `names` derives every object name. It imports
only `dsr_operator.api`, and only to name objects after DsrServices.
"""
