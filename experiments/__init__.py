"""Experiment scripts and paper recipes on jaxsparse's public API (`python -m experiments.<x>`)."""
