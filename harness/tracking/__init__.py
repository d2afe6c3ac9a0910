"""Tracking: the only package that imports MLflow.

Store: ``tracking.uri`` from the config, else ``$MLFLOW_TRACKING_URI``, else an embedded SQLite
database ``results/mlflow.db`` with artifacts in ``results/mlartifacts`` (relative to the working
directory), never ``./mlruns`` (:mod:`.store`). One experiment per suite; one MLflow run per
pretraining run (:mod:`.runs`); params = the resolved config flattened; tags = git commit, dirty
flag, package versions, device (:mod:`.provenance`); metrics under stable names
(:mod:`.keys`); reading runs back for leaderboards and comparisons (:mod:`.query`); the MLflow
UI process (:mod:`.ui`).
"""
