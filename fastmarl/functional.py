"""fastmarl's functional API: one call per hot path, validated, broadcast, one op inside."""

from fastmarl.objectives.value.functional import generalized_advantage_estimate

__all__ = ["generalized_advantage_estimate"]
