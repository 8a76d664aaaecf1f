"""Helpers for the notebooks: explore, zoo, schedule_view, widgets, viz, profile, and the notebook runner."""
