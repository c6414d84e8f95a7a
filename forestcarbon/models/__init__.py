"""Allometry (single-tree biomass), carbon conversion and fitted AGB regressors."""
